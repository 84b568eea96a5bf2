"""Token files: build from a tiny temp corpus, split by position, seeded windows, Shakespeare conversion."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfm.data.tokens import TokenWindows, build_token_files, read_tokens, val_windows, write_tokens
from mmfm.tokenizers import load_tokenizer

TEXT = "".join(f"SPEAKER {i % 7}:\nline number {i} of the play, with words.\n\n" for i in range(300))


def _shakespeare_module():
    path = Path(__file__).resolve().parents[1] / "datasets" / "shakespeare.py"
    spec = importlib.util.spec_from_file_location("shakespeare_ds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_build_split_and_roundtrip(tmp_path, kind):
    meta = build_token_files(TEXT, tmp_path, kind, vocab_size=300)
    assert meta["train_chars"] == int(len(TEXT) * 0.9) and meta["train_chars"] + meta["val_chars"] == len(TEXT)
    assert json.loads((tmp_path / "meta.json").read_text())["vocab_size"] == meta["vocab_size"]
    tok = load_tokenizer(tmp_path / "tokenizer")
    train, val = read_tokens(tmp_path / "train.bin"), read_tokens(tmp_path / "val.bin")
    assert train.dtype == np.uint16 and len(train) == meta["train_tokens"]
    assert tok.decode(train) + tok.decode(val) == TEXT  # first 90% / last 10% by position


def test_windows_are_pure_functions_of_seed_and_step(tmp_path):
    build_token_files(TEXT, tmp_path, "char")
    a = TokenWindows(tmp_path / "train.bin", block_size=16, batch_size=4, seed=1)
    b = TokenWindows(tmp_path / "train.bin", block_size=16, batch_size=4, seed=1)
    x, y = a.batch(7)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(b.batch(7)[0], x) and not torch.equal(a.batch(8)[0], x)
    assert not torch.equal(TokenWindows(tmp_path / "train.bin", 16, 4, seed=2).batch(7)[0], x)
    it = iter(a)
    first = [next(it)[0] for _ in range(3)]
    state = a.state_dict()
    b.load_state_dict(state)  # resume: the next batch is the one at state["step"]
    assert torch.equal(next(iter(b))[0], next(it)[0]) and state["step"] == 3
    assert torch.equal(first[2], a.batch(2)[0])


def test_val_windows_cover_split(tmp_path):
    path = write_tokens(tmp_path / "v.bin", np.arange(1000) % 50)
    full = val_windows(path, 32)
    assert len(full) == 999 // 32 and torch.equal(full[0][1], full[0][0] + 1)
    part = val_windows(path, 32, max_tokens=320)
    assert len(part) == 10
    with pytest.raises(ValueError):
        write_tokens(tmp_path / "bad.bin", [70000])


def test_shakespeare_markdown_conversion(tmp_path):
    ds = _shakespeare_module()
    md = ("# A Play\n\n## ACT I\n\n_Enter ROMEO and\nJULIET_\n\n**ROMEO**  \nBut soft, what light  \n"
          "Through yonder window breaks?\n\n_Exit JULIET_\n\nIt is the east.\n\n**JULIET**  \n"
          "__\\[Aside]_  \nAy me\\--\n")
    assert ds.play_to_text(md) == ("ROMEO:\nBut soft, what light\nThrough yonder window breaks?\nIt is the east."
                                   "\n\nJULIET:\nAy me--")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "p.md").write_text(md)
    (tmp_path / "a.md").write_text("**LEAR**  \nNothing.\n")
    assert ds.corpus_text(tmp_path).startswith("LEAR:\nNothing.\n\nROMEO:")  # sorted path order
