"""The text tasks beyond BERT's genre classifier: the 38-play task, GPT (last token) and T5 (text-to-text) heads,
mean-pooled BERT retrieval (recipes/text_classify.py), the heads' building blocks (mmfm.train.text_tasks), and
recipes/t5_vs_gpt_arith.py, each on tiny data the test writes itself."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import mmfm
from mmfm.tokenizers import CharTokenizer
from mmfm.train.text_classify import encode_texts
from mmfm.train.text_tasks import LastTokenClassifier, encode_causal, encode_seq2seq, label_scores, name_scores, \
    nearest_labels

ROOT = Path(__file__).resolve().parents[1]
# two genres x two plays; each play has words of its own, so the play is recoverable from the text
PLAYS = {("comedies", "merry-play"): "jest wedding song fool", ("comedies", "dance-play"): "dance masque lute bride",
         ("tragedies", "grave-play"): "grave poison murder tomb", ("tragedies", "ghost-play"): "ghost blood dagger crow"}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plays(root: Path, scenes: int = 8, speeches: int = 3) -> Path:
    for (genre, play), words in PLAYS.items():
        w = words.split()
        lines = [f"# {play}", "", "## ACT I", ""]
        for s in range(scenes):
            lines += [f"### SCENE {s + 1}. A hall.", ""]
            for k in range(speeches):
                lines += ["**SPEAKER**  ", " ".join(w[(s + k + j) % 4] for j in range(8)), ""]
        (root / genre).mkdir(parents=True, exist_ok=True)
        (root / genre / f"{play}.md").write_text("\n".join(lines))
    return root


def _inits(tmp_path: Path, plays: Path) -> tuple[Path, Path]:
    tok = CharTokenizer.train("".join(p.read_text() for p in plays.rglob("*.md")))
    bert = mmfm.build_model("bert-test", vocab_size=tok.vocab_size + 1, mask_id=tok.vocab_size, pad_id=tok.pad_id)
    bert.tokenizer = tok
    bert.save_pretrained(tmp_path / "bert")
    t5 = mmfm.build_model("t5-test", vocab_size=tok.vocab_size, pad_id=tok.pad_id, eos_id=tok.eos_id)
    t5.tokenizer = tok
    t5.save_pretrained(tmp_path / "t5")
    return tmp_path / "bert", tmp_path / "t5"


def test_play_task_with_every_head(tmp_path):
    plays = _plays(tmp_path / "plays")
    bert, t5 = _inits(tmp_path, plays)
    out = tmp_path / "clf"
    _load("text_classify").main([
        "--init", str(bert), "--t5-init", str(t5), "--data", str(plays), "--max-steps", "8", "--out", str(out),
        "--models", "bert,gpt,t5,retrieval", "task=play", "balanced=true", "batch_size=8", "warmup_steps=0",
        "val_fraction=0.25", "test_fraction=0.25", "min_words=3", "max_len=48", "lr=1e-3"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes"] == sorted(p for _, p in PLAYS) and m["task"] == "play"
    for key in ("test/macro_f1", "gpt/accuracy", "gpt/macro_f1", "t5/accuracy", "t5/macro_f1", "t5/valid",
                "retrieval/play_top1", "retrieval/play_macro_f1", "retrieval/val_play_top1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert "scratch/macro_f1" not in m  # not asked for
    assert m["retrieval_tfidf/play_top1"] > 0.9  # each play's own words: the nearest speech is of the same play
    assert m["baseline/accuracy"] > 0.9
    assert mmfm.build_model(out / "model").config.num_labels == 4


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        _load("text_classify").main(["--models", "bert,lstm", "--out", str(tmp_path)])


def test_t5_learns_to_name_and_generates_exactly():
    torch.manual_seed(0)
    tok = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ")
    t5 = mmfm.build_model("t5-test", vocab_size=tok.vocab_size, pad_id=tok.pad_id, eos_id=tok.eos_id)
    t5.tokenizer = tok
    from mmfm.train.text_tasks import Seq2Seq, generate_texts

    sources, names = ["a merry jest", "a bloody grave", "the fool sings", "the ghost walks"], ["comedy", "tragedy"]
    x, y = encode_seq2seq(tok, sources, [names[i % 2] for i in range(4)], 16, 9)
    assert x.shape == (4, 3, 16) and y.shape == (4, 9)
    assert (x[:, 2, 0] == tok.pad_id).all() and torch.equal(x[0, 2, 1:7], y[0, :6])  # shifted right
    assert y[0, 6] == tok.eos_id and (y[0, 7:] == -100).all()
    model, opt = Seq2Seq(t5, 9), torch.optim.Adam(t5.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    texts = generate_texts(t5, x, 9)
    assert texts == ["comedy", "tragedy", "comedy", "tragedy"]
    s = name_scores(texts[:3] + ["comedyy"], names, torch.tensor([0, 1, 0, 1]))
    assert s["accuracy"] == 0.75 and s["valid"] == 0.75 and abs(s["macro_f1"] - (1.0 + 2 / 3) / 2) < 1e-6


def test_last_token_pooling_ignores_padding():
    tok = CharTokenizer.train("abcdefgh ")
    gpt = mmfm.build_model("gpt-test", vocab_size=tok.vocab_size, block_size=32)
    clf = LastTokenClassifier(gpt, 3).eval()
    x = encode_texts(tok, ["abc", "abcdefgh", "h"], 12, eos_last=True)
    assert (x[0, 0, :4] == torch.tensor(tok.encode("abc") + [tok.eos_id])).all() and x[0, 1].sum() == 4
    wide = encode_texts(tok, ["abc", "abcdefgh", "h"], 20, eos_last=True)
    with torch.no_grad():
        a, b, alone = clf(x), clf(wide), clf(x[:1])
    assert a.shape == (3, 3) and torch.allclose(a, b, atol=1e-5) and torch.allclose(a[:1], alone, atol=1e-5)


def test_causal_rows_label_only_the_target():
    tok = CharTokenizer.train("0123456789+=?\n")
    x, y = encode_causal(tok, ["1+2=?\n", "3+4=?\n"], ["3", "7"], 10)
    assert x.shape == y.shape == (2, 10)
    assert y[0].ne(-100).sum() == 2 and y[0, 5] == tok.encode("3")[0] and y[0, 6] == tok.eos_id
    assert x[0, 6] == tok.encode("3")[0]  # position 5 (the "\n") predicts the target's first token
    with pytest.raises(ValueError, match="max_len"):
        encode_causal(tok, ["1+2=?\n"], ["3"], 4)


def test_nearest_labels_and_scores():
    index = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]])
    pred = nearest_labels(index, torch.tensor([5, 6, 7]), torch.tensor([[2.0, 0.1], [0.1, 3.0], [-3.0, 0.0]]))
    assert pred.tolist() == [5, 6, 7]  # cosine, not distance: the scale of a query does not matter
    s = label_scores(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), 3)
    assert abs(s["top1"] - 2 / 3) < 1e-6 and abs(s["macro_f1"] - (1 + 2 / 3 + 0) / 3) < 1e-6


def test_t5_vs_gpt_arith_end_to_end(tmp_path):
    out = tmp_path / "arith"
    m = _load("t5_vs_gpt_arith").main([
        "--max-steps", "4", "--out", str(out), "n_embd=16", "n_head=2", "gpt_layers=2", "t5_layers=1",
        "n_train=64", "n_test=16", "n_probe=8", "batch_size=16", "warmup_steps=0"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["winner"] == m["winner"] in ("gpt", "t5", "tie") and saved["steps"] == 4
    assert abs(saved["t5/params"] - saved["gpt/params"]) <= 0.01 * saved["gpt/params"]  # equal size
    for name in ("gpt", "t5"):
        assert saved[f"{name}/heldout/n"] == 16 and saved[f"{name}/train/n"] == 8
        assert 0.0 <= saved[f"{name}/heldout/exact"] <= saved[f"{name}/heldout/answer_accuracy"] <= 1.0
        assert mmfm.build_model(out / name / "model").num_params() == saved[f"{name}/params"]


def test_arith_scores_and_sizes():
    from mmfm.align.task import Problem, is_heldout, solve
    from mmfm.config import ConfigError
    from mmfm.train.arith_t2t import ArithConfig, arith_data, arith_scores, arith_tokenizer, build_t5_matching

    p = Problem(52, "-", 38)
    s = arith_scores([p, p, p], [solve(p), "2-8=4. Answer: 14", "Answer: 15"], "worked")
    assert abs(s["exact"] - 1 / 3) < 1e-9 and abs(s["answer_accuracy"] - 2 / 3) < 1e-9
    assert arith_scores([p, p], ["14", "x"], "answer")["exact"] == 0.5
    cfg = ArithConfig(n_train=50, n_test=10, n_embd=16, n_head=2, gpt_layers=1, t5_layers=4)
    data = arith_data(cfg)
    assert not any(is_heldout(q) for q in data["train"][0]) and all(is_heldout(q) for q in data["test"][0])
    with pytest.raises(ConfigError, match="t5_layers"):
        build_t5_matching(cfg, arith_tokenizer(data), 1000)
