"""The Debian emoji and clip art written out as a user's data: image files plus an open_clip CSV.

    apt-get update && apt-get install -y fonts-noto-color-emoji openclipart-svg     # once (Debian/Ubuntu)
    python datasets/emoji_clipart_csv.py                       # -> data/emoji_clipart/{pairs.csv,classes.json,images/}
    python recipes/clip_pretrain.py --data data/emoji_clipart/pairs.csv --out runs/clip_emoji_clipart

pairs.csv has open_clip's columns `filepath` (relative to the CSV's folder) and `title` (one caption per image,
drawn by --seed from the emoji_shards / clipart_shards phrasings), plus `source` (emoji, clipart) and `label`
(the clip-art category; empty for emoji). classes.json lists the clip-art categories and zero-shot prompts, so
that clip_pretrain reports zero-shot on the clip-art categories and retrieval on all held-out pairs. The recipe
holds out --test-fraction of the images by --seed; this script does not split.
"""
import argparse
import csv
import json
import random
import sys
import unicodedata
from pathlib import Path

from PIL import Image, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clipart_shards import ROOT as CLIPART_ROOT  # noqa: E402
from clipart_shards import captions as clipart_captions  # noqa: E402
from clipart_shards import metadata  # noqa: E402
from clipart_shards import render as render_svg  # noqa: E402
from emoji_shards import FONT, TEMPLATES, code_points  # noqa: E402
from emoji_shards import render as render_emoji  # noqa: E402

SKIP_CATEGORIES = ("unsorted", "special")  # no common theme: not a class
PROMPTS = ["clip art of {}.", "a drawing from the {} category.", "{}: a picture."]


def emoji_rows(out: Path, size: int, rng: random.Random) -> tuple[list[dict], int]:
    from mmfm.data.imagetext import article

    font = ImageFont.truetype(str(FONT), 109)
    rows, blank = [], 0
    for cp in code_points(FONT):
        img = render_emoji(chr(cp), font, size)
        if img is None:
            blank += 1
            continue
        name = unicodedata.name(chr(cp)).lower()
        rel = Path("images") / "emoji" / f"{cp:06x}.png"
        Image.fromarray(img).save(out / rel)
        caption = rng.choice(TEMPLATES).format(name=name, a_name=article(name))
        rows.append({"filepath": str(rel), "title": caption, "source": "emoji", "label": ""})
    return rows, blank


def clipart_rows(out: Path, size: int, per_category: int, min_category: int, rng: random.Random):
    """Up to per_category SVGs of every category with at least min_category of them."""
    by_cat: dict[str, list[Path]] = {}
    for p in sorted(CLIPART_ROOT.rglob("*.svg")):
        by_cat.setdefault(p.relative_to(CLIPART_ROOT).parts[0], []).append(p)
    cats = sorted(c for c, ps in by_cat.items() if len(ps) >= min_category and c not in SKIP_CATEGORIES)
    rows, failed, untitled = [], 0, 0
    for cat in cats:
        paths = by_cat[cat]
        for i, path in enumerate(sorted(rng.sample(paths, min(per_category, len(paths))))):
            title, keywords = metadata(path)
            img = render_svg(path, size) if title else None
            if img is None:
                failed, untitled = failed + bool(title), untitled + (not title)
                continue
            rel = Path("images") / "clipart" / cat / f"{i:05d}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(out / rel)
            name = cat.replace("_", " ")
            rows.append({"filepath": str(rel), "title": rng.choice(clipart_captions(title, name, keywords)),
                         "source": "clipart", "label": name})
    return rows, [c.replace("_", " ") for c in cats], {"render_failed": failed, "untitled": untitled}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/emoji_clipart")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--per-category", type=int, default=150, help="clip-art SVGs drawn per category")
    p.add_argument("--min-category", type=int, default=40, help="categories with fewer SVGs are left out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for path, pkg in ((FONT, "fonts-noto-color-emoji"), (CLIPART_ROOT, "openclipart-svg")):
        if not path.exists():
            sys.exit(f"{path} not found: install it with\n  apt-get update && apt-get install -y {pkg}")
    out = Path(args.out)
    (out / "images" / "emoji").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    emoji, blank = emoji_rows(out, args.size, rng)
    clipart, categories, counts = clipart_rows(out, args.size, args.per_category, args.min_category, rng)
    with open(out / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "title", "source", "label"])
        writer.writeheader()
        writer.writerows(emoji + clipart)
    (out / "classes.json").write_text(json.dumps({"clipart": {"classnames": categories, "prompts": PROMPTS}},
                                                 indent=2))
    print(json.dumps({"emoji": len(emoji), "emoji_blank_dropped": blank, "clipart": len(clipart),
                      "categories": len(categories), **counts, "csv": str(out / "pairs.csv")}))


if __name__ == "__main__":
    main()
