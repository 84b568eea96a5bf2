"""Write the default CLIP shards: MNIST-5k digits and the 10 animal silhouettes, captioned from their labels.

    python datasets/clip_shards.py                 # -> data/clip/{train,test}-*.tar + classes.json
    python datasets/clip_shards.py --out DIR --test-fraction 0.2 --seed 0

The test split is by image: no test image appears in a training shard under any caption.
"""
import argparse
import json
import logging

from mmfm.data.imagetext import build_label_shards


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/clip")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_label_shards(args.out, test_fraction=args.test_fraction, seed=args.seed, maxcount=args.maxcount)
    print(json.dumps({"train_shards": len(out["train"]), "test_shards": len(out["test"]), **out["counts"]}))


if __name__ == "__main__":
    main()
