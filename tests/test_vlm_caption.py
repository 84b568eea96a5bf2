"""Captioning with the VLM: the caption data from CLIP-style shards, the metrics, and recipes/vlm_train.py
task=caption end to end on tiny synthetic shards with a tiny CLIP folder, with the tower pre-trained on the
training images' classes (and on nothing else)."""
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mmfm
from mmfm.data.captions import PROMPT, caption_sets, caption_tokenizer, class_sources, image_key
from mmfm.data.imagetext import ANIMALS, DIGITS, build_label_shards
from mmfm.data.vqa import NAMES
from mmfm.train.captioning import caption_metrics, clip_scores, load_clip
from mmfm.train.vlm import IGNORE, QACollate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(0)
    fake = lambda: (rng.integers(0, 255, (30, 28, 28), dtype=np.uint8), np.arange(30) % 10)  # noqa: E731
    sources = [dataclasses.replace(DIGITS, loader=fake), dataclasses.replace(ANIMALS, loader=fake)]
    out = tmp_path_factory.mktemp("shards")
    build_label_shards(out, sources, test_fraction=0.2, seed=0)
    return out


def test_caption_sets_keep_clips_split_and_draw_every_caption(shards):
    sets = caption_sets(shards, n_test=0)
    train_keys = {s["key"].split("r")[0] for s in sets["train"].samples}
    test_keys = {s["key"] for s in sets["test"].samples}
    assert train_keys and test_keys and not train_keys & test_keys  # the shards' split by image
    tok = caption_tokenizer()
    drawn = {sets["train"][0].answer for _ in range(40)}
    assert len(drawn) > 3 and drawn <= set(sets["train"].samples[0]["captions"])
    ex = sets["test"][0]
    assert ex.answer == sets["test"][0].answer and ex.answer in ex.captions and ex.question == PROMPT
    batch = QACollate(tok, 100)([ex])
    start = len(tok.encode(PROMPT + " ")) - 1
    assert (batch["targets"][0, :start] == IGNORE).all()  # the loss covers the caption and <eos> only
    assert tok.decode(batch["targets"][0, start:-1].tolist()) == ex.answer


def test_caption_metrics_and_clip_score():
    refs = [["a photo of the digit seven", "the number seven"], ["a drawing of a cat"]]
    perfect = caption_metrics(["the number seven", "a drawing of a cat"], refs)
    assert perfect == {"bleu4": pytest.approx(1.0), "rouge_l": pytest.approx(1.0)}
    wrong = caption_metrics(["the number two", "a shadow of a dog"], refs)
    assert wrong["bleu4"] < 0.5 and wrong["rouge_l"] < 0.8
    clip = _tiny_clip()
    images = torch.randint(0, 255, (3, 1, 28, 28), dtype=torch.uint8)
    texts = ["a cat", "the digit 7", "a dog"]
    got = clip_scores(clip, images, texts)
    with torch.no_grad():  # at the CLIP's own size its preprocessing is (x / 255 - 0.5) / 0.5, as encode_image's
        ids, _ = clip.tokenizer.encode_batch(texts, max_len=clip.config.context_length, pad_to_max=True)
        cos = (clip.encode_image(images) * clip.encode_text(ids)).sum(-1)
    assert torch.allclose(got, 100 * cos.clamp(min=0), atol=1e-4)
    assert got.max() > 0
    with pytest.raises(FileNotFoundError, match="clip_pretrain.py"):
        load_clip("runs/no_such_clip/model")


def _tiny_clip():
    torch.manual_seed(0)
    tok = caption_tokenizer()
    clip = mmfm.build_model("clip-test", in_chans=1, img_size=28, patch_size=7, image_mean=(0.5,), image_std=(0.5,),
                            vocab_size=tok.vocab_size, eot_token_id=tok.eos_id).eval()
    clip.tokenizer = tok
    return clip


def _recipe():
    spec = importlib.util.spec_from_file_location("vlm_train", ROOT / "recipes" / "vlm_train.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_caption_recipe_end_to_end_with_a_tower_pretrained_on_training_images_only(shards, tmp_path, monkeypatch):
    recipe = _recipe()
    seen = []
    real = recipe.cell_classification_set

    def spy(src, size):
        seen.append(src)
        return real(src, size)

    monkeypatch.setattr(recipe, "cell_classification_set", spy)
    clip = _tiny_clip()
    clip.save_pretrained(tmp_path / "clip")
    out = tmp_path / "run"
    metrics = recipe.main(["--preset", "vlm-test", "--max-steps", "3", "--out", str(out), "task=caption",
                           f"clip={tmp_path / 'clip'}", f"caption_data={shards}", "n_caption_test=0",
                           "n_caption_val=6", "eval_split=val", "tower_steps=2", "tower_batch=8", "tokenizer=bpe",
                           "batch_size=8", "warmup_steps=1", "blind=true", "patch_size=7", "block_size=80"])
    sets = caption_sets(shards, n_test=0, n_val=6)
    train_keys = {image_key(s) for s in sets["train"].samples}
    val_keys, test_keys = {s["key"] for s in sets["val"].samples}, {s["key"] for s in sets["test"].samples}
    assert len(val_keys) == 6 and not val_keys & train_keys and not test_keys & train_keys
    assert set(seen[0].ids) == train_keys and len(seen[0].ids) == len(train_keys)  # each training image once
    assert set(seen[1].ids) == val_keys  # tower/val_accuracy: the held-out training images, never the test ones
    assert not any(set(s.ids) & test_keys for s in seen)

    saved = json.loads((out / "metrics.json").read_text())
    for key in ("val/bleu4", "val/rouge_l", "val/clip_score", "val/clip_score_real", "val/clip_score_ratio",
                "val/clip_score_blind", "tower/val_accuracy"):
        assert key in saved and np.isfinite(saved[key]), key
    assert not any(k.startswith("test/") for k in saved)  # eval_split=val: the test images are not scored
    assert "caption_clip_score" not in saved and "bleu4" not in saved  # the names are the test split's
    assert saved["val/clip_score_ratio"] == pytest.approx(saved["val/clip_score"] / saved["val/clip_score_real"])
    assert (out / "captions.png").is_file() and (out / "model" / "config.json").is_file()
    assert metrics["steps"] == 3 and saved["tower_steps"] == 2 and saved["train_s"] >= saved["tower_s"] > 0
    reloaded = mmfm.build_model(str(out / "model"))
    assert reloaded.config.img_size == 28 and reloaded.tokenizer.kind == "bpe"
    tower = mmfm.build_model(str(out / "tower" / "model"))  # frozen (the default): still the pre-trained tower
    assert tower.config.num_classes == len(NAMES)
    for name, w in tower.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(reloaded.visual.state_dict()[name], w), name


def test_class_sources_follow_the_captions(shards):
    sets = caption_sets(shards, n_test=0)
    src, n_classes = class_sources(sets["train"], shards)
    assert n_classes == len(NAMES) and set(src.labels.tolist()) == set(range(20))
    by_key = {image_key(s): s for s in sets["train"].samples}
    for key, label in zip(src.ids, src.labels):
        assert NAMES[label] in by_key[key]["captions"][0]  # digits 0-9, then animals 10-19


def test_caption_flags_are_refused_where_they_do_not_apply(tmp_path):
    recipe = _recipe()
    with pytest.raises(ValueError, match="task=caption"):
        recipe.main(["--out", str(tmp_path), "clip=runs/x"])  # a caption flag on the VQA task
    with pytest.raises(ValueError, match="VQA data"):
        recipe.main(["--out", str(tmp_path), "task=caption", "n_train=10"])
    with pytest.raises(ValueError, match="task=caption"):
        recipe.main(["--out", str(tmp_path), "n_caption_val=10"])
    with pytest.raises(ValueError, match="choose one"):
        recipe.main(["--out", str(tmp_path), "task=caption", "tower=runs/x", "tower_steps=5"])
    with pytest.raises(ValueError, match="n_caption_val"):
        recipe.main(["--out", str(tmp_path), "task=caption", "eval_split=val", "n_caption_val=0"])
    with pytest.raises(FileNotFoundError, match="clip_pretrain"):
        recipe.main(["--out", str(tmp_path), "task=caption", "clip=runs/no_such/model"])
