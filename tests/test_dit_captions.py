"""Caption-conditioned DiT on a user's RGB image-text pairs (mmfm.diffusion.captions, recipes/dit_train.py
--data PAIRS text_encoder=CLIP), pixels and VAE latents, at tiny shapes."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_dit_train import load_recipe

import mmfm
from mmfm.config import ConfigError
from mmfm.diffusion import diffusion_loss, drop_condition, make_train_scheduler
from mmfm.diffusion.captions import CaptionConditioner, load_captioned
from mmfm.models.vae import build_vae
from mmfm.tokenizers import CharTokenizer

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}
SHAPES = ("square", "bar")


def captioned_pairs(root, n=24):
    """A CSV (filepath,title) of n distinct 20x20 RGB PNGs: a coloured shape on white, captioned by colour and
    shape; image 0 has a second row (another caption of the same file)."""
    (root / "images").mkdir(parents=True)
    rows, rng = [], np.random.default_rng(0)
    for i in range(n):
        colour, shape = list(COLOURS)[i % 4], SHAPES[(i // 4) % 2]
        x = np.full((20, 20, 3), 255, np.uint8)
        x[rng.integers(0, 3, (20, 20)) == 0] = 240  # light texture: every file differs
        r, c = 2 + i % 5, 3 + i % 7
        x[r:r + 8, c:c + (8 if shape == "square" else 3)] = COLOURS[colour]
        Image.fromarray(x).save(root / "images" / f"{i:03d}.png")
        rows.append({"filepath": f"images/{i:03d}.png", "title": f"a {colour} {shape}"})
    rows.append({"filepath": "images/000.png", "title": "a red square on white"})
    with open(root / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    return root / "pairs.csv"


def tiny_clip(captions, img_size=16):
    clip = mmfm.build_model("clip-test", img_size=img_size, patch_size=8, in_chans=3, image_mean=(0.5, 0.5, 0.5),
                            image_std=(0.5, 0.5, 0.5), context_length=32)
    clip.tokenizer = CharTokenizer.train("".join(captions))
    return clip


@pytest.fixture
def pairs_and_clip(tmp_path):
    csv_path = captioned_pairs(tmp_path / "data")
    titles = [r["title"] for r in csv.DictReader(open(csv_path))]
    clip_dir = tmp_path / "clip"
    tiny_clip(titles).save_pretrained(clip_dir)
    return csv_path, clip_dir


def test_load_captioned_splits_by_image_and_keeps_every_caption(pairs_and_clip):
    csv_path, _ = pairs_and_clip
    train, test, sizes = load_captioned(csv_path, size=16)
    assert train.images.shape[1:] == (3, 16, 16) and test.images.shape[1:] == (3, 16, 16)
    assert len(train) + len(test) == 24 and sizes["split/test_images"] == len(test) >= 4
    assert -1 <= float(train.images.min()) and float(train.images.max()) <= 1
    both = [c for c in train.captions + test.captions if len(c) == 2]
    assert both == [["a red square", "a red square on white"]]  # one image, two rows: both captions kept
    gray, _, _ = load_captioned(csv_path, size=16, channels=1)
    assert gray.images.shape[1] == 1


def test_caption_conditioner_picks_each_images_own_captions_and_drops_them():
    captions = [["a red square", "a red square on white"], ["a blue bar"], ["a green square"]]
    clip = tiny_clip([c for caps in captions for c in caps] + ["a yellow bar"])
    cond = CaptionConditioner(clip, captions, ["a yellow bar", "a blue bar", "a yellow bar"])
    own = cond.encode(["a red square", "a red square on white", "a blue bar", "a green square"])["text"]
    torch.manual_seed(0)
    picked = cond.batch_condition((None, torch.tensor([0] * 20 + [1, 2])))["text"]  # (22, E)
    first = {int((own[:2] - p).abs().sum(-1).argmin()) for p in picked[:20]}
    assert first == {0, 1}  # image 0 draws both of its captions ...
    assert all(min((own[:2] - p).abs().sum(-1)) < 1e-5 for p in picked[:20])  # ... and never another image's
    torch.testing.assert_close(picked[20:], own[2:])
    assert cond.unique_index.tolist() == [0, 1, 0] and len(cond.unique_text) == 2  # duplicate prompts count once
    dropped = drop_condition({"text": picked}, 1.0, None)["text"]
    assert dropped.abs().sum() == 0  # caption dropout: the null condition is zero text
    kept = drop_condition({"text": picked}, 0.0, None)["text"]
    assert torch.equal(kept, picked)
    dit = mmfm.build_model("dit-test", depth=1, input_size=16, in_channels=3, num_classes=0, text_dim=cond.text_dim)
    loss = diffusion_loss(dit, make_train_scheduler(), torch.rand(22, 3, 16, 16) * 2 - 1, {"text": picked}, 0.5, None)
    assert torch.isfinite(loss)
    top = cond.retrieval(torch.rand(3, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2]))
    assert set(top) == {"top1", "top5"} and top["top5"] == 1.0 and 0 <= top["top1"] <= 1  # 2 unique captions


def run_args(out, csv_path, clip_dir, *extra):
    return ["--out", str(out), "--data", str(csv_path), "--preset", "dit-test", "depth=1", "--max-steps", "2",
            "batch_size=8", "sample_steps=2", "sample_every=0", "prediction_type=sample", "sampler=ddim",
            f"text_encoder={clip_dir}",
            "input_size=16", *extra]


def test_dit_recipe_on_captions_in_pixels(tmp_path, pairs_and_clip):
    csv_path, clip_dir = pairs_and_clip
    dit_train = load_recipe("dit_train")
    out = tmp_path / "dit"
    m = dit_train.main(run_args(out, csv_path, clip_dir))
    model = mmfm.build_model(out / "model")
    assert (model.config.in_channels, model.config.input_size, model.config.num_classes) == (3, 16, 0)
    assert model.config.text_dim == mmfm.build_model(clip_dir).config.embed_dim
    assert m["steps"] == 2 and m["split/train_images"] + m["split/test_images"] == 24
    for key in ("clip_top1/captions", "clip_top5/captions", "clip_top1_real/captions", "clip_top5_real/captions"):
        assert 0 <= m[key] <= 1
    assert m["clip_top5/captions"] >= m["clip_top1/captions"] and m["fid_clip_floor/captions"] >= 0
    assert m["eval/captions"] == m["split/test_images"] and "cond_accuracy/digits" not in m
    meta = json.loads((out / "model" / "diffusion.json").read_text())
    assert meta["conditioning"] == "captions" and meta["datasets"] == [str(csv_path)] and meta["class_names"] == []
    assert (out / "samples.png").stat().st_size > 1000

    # caption_eval re-scores the saved model: with the conditioning CLIP it reproduces the recipe's metrics ...
    from mmfm.diffusion.caption_eval import rescore

    again = rescore(out / "model", csv_path)
    for key in ("clip_top1/captions", "clip_top5/captions", "clip_top1_real/captions", "fid_clip/captions"):
        assert again[key] == pytest.approx(m[key], abs=1e-6), key
    # ... and an independent judge CLIP scores the same samples in its own space
    torch.manual_seed(1)
    judge = tmp_path / "judge"
    tiny_clip([r["title"] for r in csv.DictReader(open(csv_path))]).save_pretrained(judge)
    judged = rescore(out / "model", csv_path, judge=str(judge))
    assert judged["judge"] == str(judge) and 0 <= judged["clip_top1/captions"] <= judged["clip_top5/captions"] <= 1
    assert judged["fid_clip/captions"] != pytest.approx(m["fid_clip/captions"])


def test_dit_recipe_on_captions_in_vae_latents(tmp_path, pairs_and_clip):
    csv_path, clip_dir = pairs_and_clip
    vae = tmp_path / "vae"
    build_vae("vae-test", in_channels=3, sample_size=16).save_pretrained(vae)  # 16 px RGB -> 8x8x4
    dit_train = load_recipe("dit_train")
    out = tmp_path / "dit"
    args = [a for a in run_args(out, csv_path, clip_dir, f"vae={vae}") if a != "input_size=16"]
    m = dit_train.main(args)
    model = mmfm.build_model(out / "model")
    assert (model.config.in_channels, model.config.input_size, model.config.patch_size) == (4, 8, 1)
    assert 0 <= m["clip_top1/captions"] <= 1 and m["fid_clip/captions"] >= 0
    meta = json.loads((out / "model" / "diffusion.json").read_text())
    assert meta["image_size"] == 16 and meta["latent_scale"] > 0 and (out / "model" / "vae" / "config.json").is_file()
    from mmfm.diffusion.caption_eval import rescore

    again = rescore(out / "model", csv_path)  # decodes through the saved VAE at the saved scale
    assert again["clip_top1/captions"] == pytest.approx(m["clip_top1/captions"], abs=1e-6)
    assert again["fid_clip/captions"] == pytest.approx(m["fid_clip/captions"], rel=1e-4)
    with pytest.raises(ValueError, match="not a caption-conditioned DiT"):
        json_path = out / "model" / "diffusion.json"
        json_path.write_text(json.dumps({**meta, "conditioning": None}))
        rescore(out / "model", csv_path)


def test_vae_recipe_on_rgb_pairs(tmp_path, pairs_and_clip):
    csv_path, _ = pairs_and_clip
    vae_train = load_recipe("vae_train")
    out = tmp_path / "vae"
    m = vae_train.main(["--out", str(out), "--data", str(csv_path), "--preset", "vae-test", "--max-steps", "2",
                        "image_size=16", "batch_size=4", "disc_start=1"])
    assert m["image_size"] == 16 and m["split/test"] >= 4 and m["test/psnr"] > 0 and m["compression"] == 2
    from diffusers import AutoencoderKL

    assert AutoencoderKL.from_pretrained(out / "model").config.in_channels == 3


def test_caption_refusals(tmp_path, pairs_and_clip):
    csv_path, clip_dir = pairs_and_clip
    dit_train = load_recipe("dit_train")
    out = tmp_path / "dit"
    with pytest.raises(ConfigError, match="--val-data / --test-data: caption data is split from --data"):
        dit_train.main(run_args(out, csv_path, clip_dir, "--test-data", str(csv_path)))
    with pytest.raises(ConfigError, match="caption-conditioned run is scored by CLIP retrieval"):
        dit_train.main(run_args(out, csv_path, clip_dir, f"classifier={tmp_path}"))
    with pytest.raises(ConfigError, match="diffusers' DiTPipeline takes class labels, not text_encoder="):
        dit_train.main(run_args(out, csv_path, clip_dir, f"vae={tmp_path}", f"export={tmp_path / 'p'}"))
    with pytest.raises(FileNotFoundError, match="no saved VAE there.*recipes/vae_train.py --data"):
        dit_train.main([a for a in run_args(out, csv_path, clip_dir, f"vae={tmp_path / 'none'}") if "input" not in a])
    vae = tmp_path / "vae"
    build_vae("vae-test", in_channels=3, sample_size=16).save_pretrained(vae)
    with pytest.raises(ValueError, match="input_size=16: with vae= the DiT's input_size is the VAE's latent shape"):
        dit_train.main(run_args(out, csv_path, clip_dir, f"vae={vae}"))
    vae_train = load_recipe("vae_train")
    with pytest.raises(ConfigError, match="image_size=0 keeps the images' size"):
        vae_train.main(["--out", str(out), "--data", str(csv_path), "--preset", "vae-test", "image_size=0"])
