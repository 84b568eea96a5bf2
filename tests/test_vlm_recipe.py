"""recipes/vlm_train.py end to end at tiny sizes on synthetic digits/animals (the packaged sets are replaced so
the test makes its own data), and the collate / greedy answering it relies on."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mmfm
from mmfm.data.vqa import VQAExample
from mmfm.train.vlm import IGNORE, QACollate, answer, vqa_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("vlm_train", ROOT / "recipes" / "vlm_train.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _fake_sources(monkeypatch):
    rng = np.random.default_rng(0)
    fake = (rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10)
    monkeypatch.setattr("mmfm.detect.canvas.load_mnist5k", lambda: fake)
    monkeypatch.setattr("mmfm.detect.canvas.load_animals", lambda: fake)


def test_collate_trains_on_the_answer_only():
    tok = vqa_tokenizer()
    ex = VQAExample(torch.zeros(1, 8, 8, dtype=torch.uint8), "is there a cat?", "yes", "exists", 0)
    short = VQAExample(ex.image, "is there a cow?", "no", "exists", 1)
    batch = QACollate(tok, 64)([ex, short])
    prompt = len(tok.encode("is there a cat? "))
    assert batch["ids"].shape == batch["targets"].shape == batch["mask"].shape
    assert (batch["targets"][0, :prompt - 1] == IGNORE).all()
    assert tok.decode(batch["targets"][0, prompt - 1:prompt + 2].tolist()) == "yes"
    assert batch["targets"][0, prompt + 2] == tok.eos_id
    assert batch["mask"][1].sum() == len(tok.encode("is there a cow? no"))  # the shorter row is padded


def test_bpe_tokenizer_makes_each_word_about_one_token():
    texts = ["is there a cat? yes", "how many digits are there? two", "where is the cat? top-left", "yes", "two"]
    tok = vqa_tokenizer("bpe", texts * 3)
    ids = tok.encode("is there a cat? ")
    assert len(ids) == 6 and tok.decode(ids) == "is there a cat? "  # is, there, a, cat, ?, space
    assert len(tok.encode("yes")) == 1 and tok.decode(tok.encode("top-left")) == "top-left"
    assert tok.decode(tok.encode("is there a zebu?")) == "is there a zebu?"  # unseen words still encode
    with pytest.raises(ValueError, match="training questions"):
        vqa_tokenizer("bpe")
    with pytest.raises(ValueError, match="'char' or 'bpe'"):
        vqa_tokenizer("word", texts)


def test_greedy_answers_match_the_step_by_step_argmax():
    torch.manual_seed(0)
    tok = vqa_tokenizer()
    model = mmfm.build_model("vlm-test", vocab_size=tok.vocab_size).eval()
    images = torch.randint(0, 255, (2, 1, 16, 16), dtype=torch.uint8)
    questions = ["is there a cat?", "how many digits are there?"]
    got = answer(model, tok, images, questions, max_len=4)
    for i, q in enumerate(questions):  # one row at a time, no padding at all
        ids = tok.encode(q + " ")
        for _ in range(4):
            nxt = int(model(images[i:i + 1], torch.tensor([ids]))[0, -1].argmax())
            if nxt == tok.eos_id:
                break
            ids.append(nxt)
        assert got[i] == tok.decode(ids[len(tok.encode(q + " ")):])


def test_recipe_end_to_end(tmp_path, monkeypatch):
    _fake_sources(monkeypatch)
    out = tmp_path / "vlm"
    metrics = _recipe().main(["--out", str(out), "--max-steps", "3", "--preset", "vlm-test", "patch_size=14",
                              "block_size=96", "n_train=20", "n_val=4", "n_test=12", "batch_size=4",
                              "tower_steps=2", "tower_batch=8"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 3 and 0.0 <= saved["vqa_accuracy"] <= 1.0 and 0.0 <= saved["vqa_accuracy_blind"] <= 1.0
    assert {k for k in saved if k.startswith("vqa_accuracy/")} <= {f"vqa_accuracy/{t}" for t in
                                                                 ("what", "count", "exists", "where", "relation")}
    assert metrics["train_s"] > 0 and (out / "answers.png").is_file() and (out / "loss.png").is_file()
    loaded = mmfm.build_model(str(out / "model"))
    assert loaded.config.fusion == "prefix" and loaded.tokenizer is not None
