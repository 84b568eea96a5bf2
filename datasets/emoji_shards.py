"""Noto color emoji rendered with Pillow, captioned with their Unicode names -> webdataset shards.

    apt-get update && apt-get install -y fonts-noto-color-emoji     # once (Debian/Ubuntu)
    python datasets/emoji_shards.py                                 # -> data/clip_emoji/{train,test}-*.tar

Each single-code-point emoji in the font is drawn at the font's only bitmap size (109 px), flattened on white,
resized to --size and kept unless nearly blank; captions: "grinning face", "an emoji of a grinning face", ...
Test split by image (mmfm.data.sources.split_indices). Train on both sets with
    python recipes/clip_pretrain.py --data 'data/clip/train-*.tar::data/clip_emoji/train-*.tar'
"""
import argparse
import json
import logging
import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmfm.data.imagetext import png_bytes, write_shards
from mmfm.data.sources import split_indices

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
TEMPLATES = ["{name}", "an emoji of {a_name}", "a {name} emoji", "a small colourful icon: {name}"]


def code_points(font_path: Path) -> list[int]:
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(font_path), lazy=True).getBestCmap()
    return sorted(cp for cp in cmap if cp > 0x2000 and unicodedata.name(chr(cp), ""))


def render(ch: str, font, size: int) -> np.ndarray | None:
    """RGB (size, size) uint8 on white, or None when the glyph is (nearly) blank."""
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((8, 8), ch, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    img = Image.alpha_composite(white, canvas).crop(box).convert("RGB")
    side = max(img.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    arr = np.asarray(square.resize((size, size), Image.LANCZOS))
    return arr if arr.std() > 8 else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/clip_emoji")
    p.add_argument("--size", type=int, default=28, help="image side in pixels")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not FONT.is_file():
        sys.exit(f"{FONT} not found: install the font with\n  apt-get update && apt-get install -y fonts-noto-color-emoji")
    from mmfm.data.imagetext import article

    font = ImageFont.truetype(str(FONT), 109)
    rng = random.Random(args.seed)
    samples, blank = [], 0
    for cp in code_points(FONT):
        img = render(chr(cp), font, args.size)
        if img is None:
            blank += 1
            continue
        name = unicodedata.name(chr(cp)).lower()
        caps = [t.format(name=name, a_name=article(name)) for t in TEMPLATES]
        samples.append({"__key__": f"emoji{cp:06x}", "png": png_bytes(img), "txt": rng.choice(caps),
                        "json": {"source": "emoji", "label": -1, "captions": caps}})
    train, test = split_indices(len(samples), args.test_fraction, args.seed)
    out = Path(args.out)
    shards = {"train": write_shards([samples[i] for i in train], str(out / "train-%06d.tar")),
              "test": write_shards([samples[i] for i in test], str(out / "test-%06d.tar"))}
    print(json.dumps({"emoji": len(samples), "blank_dropped": blank, "train": len(train), "test": len(test),
                      "shards": {k: len(v) for k, v in shards.items()}}))


if __name__ == "__main__":
    main()
