"""Captioning a user's image-text pairs (mmfm.data.caption_pairs): an open_clip CSV of synthetic RGB PNGs, split
by image as the CLIP recipe splits it, and recipes/vlm_train.py task=caption on it end to end with a tiny RGB
CLIP folder."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmfm
from mmfm.config import ConfigError
from mmfm.data.caption_pairs import caption_pair_sets, image_channels, is_shard_data, read_pairs
from mmfm.data.captions import PROMPT, caption_tokenizer
from mmfm.data.formats import fingerprint
from mmfm.data.pairs import split_pairs
from mmfm.train.captioning import clip_scores, load_clip
from test_vlm_recipe import _recipe

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    """30 noisy 20x20 colour squares, a second caption for every fifth, and a byte-identical copy of the first
    under another name with a third caption (one image: three captions)."""
    d = tmp_path_factory.mktemp("pairs")
    (d / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(30):
        name = list(COLOURS)[i % 3]
        pixels = np.clip(np.array(COLOURS[name]) + rng.integers(-20, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(d / "images" / f"{i:03d}.png")
        rows.append(f"images/{i:03d}.png,a {name} square")
        if i % 5 == 0:
            rows.append(f"images/{i:03d}.png,a square coloured {name}")
    shutil.copy(d / "images" / "000.png", d / "images" / "copy.png")
    rows.append("images/copy.png,a red tile")
    (d / "pairs.csv").write_text("\n".join(rows) + "\n")
    return d / "pairs.csv"


def test_split_keeps_images_apart_and_gathers_their_captions(csv_path):
    sets = caption_pair_sets(csv_path, img_size=16, in_chans=3, n_test=0, n_val=3, seed=0)
    keys = {name: {s["key"] for s in sets[name].samples} for name in ("train", "val", "test")}
    assert len(keys["val"]) == 3 and all(keys.values())
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    assert sum(map(len, keys.values())) == 30  # 31 files, 30 distinct images
    _, test, _ = split_pairs(read_pairs(csv_path), 0.2, 0)  # the CLIP recipe's split: the same test images
    assert keys["test"] == {fingerprint(Path(p).read_bytes()) for p in test.paths}
    first = fingerprint((csv_path.parent / "images" / "000.png").read_bytes())
    sample = next(s for name in keys for s in sets[name].samples if s["key"] == first)
    assert sorted(sample["captions"]) == ["a red square", "a red tile", "a square coloured red"]
    ex = sets["test"][0]
    assert ex.image.shape == (3, 16, 16) and ex.image.dtype == torch.uint8 and ex.question == PROMPT
    assert ex.answer == ex.captions[0] and ex.image[0].float().mean() != ex.image[2].float().mean()  # colour kept
    i = next(j for j, s in enumerate(sets["train"].samples) if len(s["captions"]) > 1)
    drawn = {sets["train"][i].answer for _ in range(30)}
    assert len(drawn) > 1 and drawn <= set(sets["train"].samples[i]["captions"])
    assert is_shard_data("data/clip") and not is_shard_data(csv_path) and image_channels(test.paths) == 3


def _tiny_rgb_clip(folder: Path) -> None:
    torch.manual_seed(0)
    tok = caption_tokenizer()
    clip = mmfm.build_model("clip-test", in_chans=3, img_size=16, patch_size=8, image_mean=(0.5,) * 3,
                            image_std=(0.5,) * 3, vocab_size=tok.vocab_size, eot_token_id=tok.eos_id)
    clip.tokenizer = tok
    clip.save_pretrained(folder)


def test_clip_score_with_an_rgb_clip(tmp_path):
    _tiny_rgb_clip(tmp_path / "clip")
    clip = load_clip(tmp_path / "clip")
    images = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    texts = ["a red square", "a blue square", "a green tile"]
    got = clip_scores(clip, images, texts)
    with torch.no_grad():  # at the CLIP's own size and channels its preprocessing is encode_image's
        ids, _ = clip.tokenizer.encode_batch(texts, max_len=clip.config.context_length, pad_to_max=True)
        cos = F.cosine_similarity(clip.encode_image(images), clip.encode_text(ids), dim=-1)
    assert torch.allclose(got, 100 * cos.clamp(min=0), atol=1e-4)


def test_caption_recipe_on_a_csv_end_to_end(csv_path, tmp_path):
    _tiny_rgb_clip(tmp_path / "clip")
    out = tmp_path / "run"
    args = ["--preset", "vlm-test", "--out", str(out), "task=caption", f"clip={tmp_path / 'clip'}",
            f"caption_data={csv_path}", "n_caption_test=0", "n_caption_val=0", "batch_size=8", "blind=false"]
    recipe = _recipe()
    metrics = recipe.main([*args, "--max-steps", "2", "warmup_steps=1"])  # tower_steps' default: skipped
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test/bleu4", "test/rouge_l", "test/clip_score", "test/clip_score_real"):
        assert key in saved and np.isfinite(saved[key]), key
    gen, real = saved["test/clip_score"], saved["test/clip_score_real"]  # an untrained CLIP: real may be 0
    assert saved["test/clip_score_ratio"] == (pytest.approx(gen / real) if real > 0 else pytest.approx(float("nan"),
                                                                                                        nan_ok=True))
    assert metrics["steps"] == 2 and "tower_s" not in saved
    assert saved["bleu4"] == saved["test/bleu4"] and saved["caption_clip_score"] == saved["test/clip_score"]
    assert saved["caption_clip_score_real"] == saved["test/clip_score_real"]  # the names for the test split
    assert (out / "captions.png").is_file()
    model = mmfm.build_model(str(out / "model"))
    assert (model.config.in_chans, model.config.img_size) == (3, 16)  # from the data and the preset
    assert all(p.requires_grad for p in model.visual.parameters())  # no pre-trained tower to keep: it trained
    with pytest.raises(ConfigError, match="tower_steps=5"):
        recipe.main([*args, "tower_steps=5"])
    gray = tmp_path / "gray_vlm"
    mmfm.build_model("vlm-test", in_chans=1).save_pretrained(gray)
    with pytest.raises(ConfigError, match=r"in_chans=1 .*colour \(3\)"):
        recipe.main([*args, "tower_steps=0"] + ["--preset", str(gray)])
