"""openclipart SVGs rendered with cairosvg, captioned from their titles, categories and keywords -> shards.

    apt-get update && apt-get install -y openclipart-svg            # once (Debian/Ubuntu)
    python datasets/clipart_shards.py --limit 2000                 # -> data/clip_clipart/{train,test}-*.tar

Captions come from <dc:title>, the category folder and the <rdf:li> keywords (hash(...) junk dropped), e.g.
"a red apple", "clip art of a red apple", "food: a red apple", "a red apple (fruit, apple, red)". SVGs that fail
to render are skipped and counted. Test split by image (mmfm.data.sources.split_indices).
"""
import argparse
import json
import random
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mmfm.data.imagetext import png_bytes, write_shards
from mmfm.data.sources import split_indices

ROOT = Path("/usr/share/openclipart/svg")
NS = {"dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}


def metadata(path: Path) -> tuple[str, list[str]]:
    """(title, keywords) from an SVG's RDF metadata; ('', []) when unreadable."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return "", []
    title = next((t.text.strip() for t in root.iter(f"{{{NS['dc']}}}title") if t.text and t.text.strip()), "")
    words = [li.text.strip() for li in root.iter(f"{{{NS['rdf']}}}li") if li.text and li.text.strip()]
    words = [w for w in words if not w.lower().startswith("hash") and len(w) < 30 and not re.search(r"\d{4,}", w)]
    return title, list(dict.fromkeys(words))[:6]


def captions(title: str, category: str, keywords: list[str]) -> list[str]:
    title = re.sub(r"\s*\([^)]*\d[^)]*\)", "", title)  # "(wed aug 25 23:29:46 2004)"-style stamps
    title = re.sub(r"[_\-]+", " ", title).strip().lower()
    caps = [title, f"clip art of {title}", f"{category}: {title}"]
    if keywords:
        caps.append(f"{title} ({', '.join(k.lower() for k in keywords)})")
    return caps


def render(path: Path, size: int) -> np.ndarray | None:
    import io

    import cairosvg
    from PIL import Image

    try:
        png = cairosvg.svg2png(url=str(path), output_width=size, output_height=size, background_color="white")
    except Exception:  # noqa: BLE001 - malformed SVGs raise many different errors; they are counted
        return None
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/clip_clipart")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="at most this many SVGs (sorted, then sampled)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not ROOT.is_dir():
        sys.exit(f"{ROOT} not found: install the clip art with\n  apt-get update && apt-get install -y openclipart-svg")
    rng = random.Random(args.seed)
    paths = sorted(ROOT.rglob("*.svg"))
    if args.limit:
        paths = sorted(rng.sample(paths, min(args.limit, len(paths))))
    samples, failed, untitled = [], 0, 0
    for i, path in enumerate(paths):
        title, keywords = metadata(path)
        if not title:
            untitled += 1
            continue
        img = render(path, args.size)
        if img is None:
            failed += 1
            continue
        caps = captions(title, path.relative_to(ROOT).parts[0].replace("_", " "), keywords)
        samples.append({"__key__": f"clipart{i:06d}", "png": png_bytes(img), "txt": rng.choice(caps),
                        "json": {"source": "clipart", "label": -1, "captions": caps, "file": str(path)}})
    train, test = split_indices(len(samples), args.test_fraction, args.seed)
    out = Path(args.out)
    shards = {"train": write_shards([samples[i] for i in train], str(out / "train-%06d.tar")),
              "test": write_shards([samples[i] for i in test], str(out / "test-%06d.tar"))}
    print(json.dumps({"svgs": len(paths), "kept": len(samples), "render_failed": failed, "untitled": untitled,
                      "train": len(train), "test": len(test), "shards": {k: len(v) for k, v in shards.items()}}))


if __name__ == "__main__":
    main()
