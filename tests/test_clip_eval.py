"""Zero-shot, retrieval and linear probe on synthetic cases with known answers."""
import pytest
import torch
import torch.nn.functional as F

from mmfm.eval.linear_probe import linear_probe
from mmfm.eval.retrieval import group_ids, retrieval_recall
from mmfm.eval.zeroshot import topk_accuracy, zeroshot_accuracy, zeroshot_classifier
from mmfm.tokenizers import CharTokenizer


class FirstCharModel(torch.nn.Module):
    """encode_text: one-hot of the token at `pos` (the class letter in the prompt), over `dim` dims."""

    def __init__(self, tok, pos, dim=8):
        super().__init__()
        self.tok, self.pos, self.dim = tok, pos, dim
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"context_length": 32})()

    def encode_text(self, ids):
        letters = ids[:, self.pos] - self.tok.token_to_id("a")
        return F.one_hot(letters, self.dim).float()


def test_zeroshot_prompt_ensemble_known_answer():
    tok = CharTokenizer("abcdefgh xyz{}")
    model = FirstCharModel(tok, pos=2)
    templates = ["x {} y", "z {}"]  # the class letter is token 2 in both
    w = zeroshot_classifier(model, tok, ["a", "b", "c"], templates)
    assert torch.allclose(w, torch.eye(3, 8))
    labels = torch.tensor([0, 1, 2, 2, 1])
    images = F.one_hot(labels, 8).float()
    images[4] = F.normalize(torch.tensor([0.0, 0.6, 0.8, 0, 0, 0, 0, 0]), dim=0)  # closer to class 2
    acc = zeroshot_accuracy(model, tok, images, labels, ["a", "b", "c"], templates, ks=(1, 2))
    assert acc == pytest.approx({"top1": 0.8, "top2": 1.0})


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [1, 2, 3], [3, 2, 1]])
    assert topk_accuracy(logits, torch.tensor([0, 2, 2, 2]), ks=(1, 2, 3)) == {"top1": 0.5, "top2": 0.75, "top3": 1.0}


def test_retrieval_recall_known_values():
    feats = torch.eye(4)
    r = retrieval_recall(feats, feats, ks=(1, 2))
    assert r == {"i2t_recall@1": 1.0, "i2t_recall@2": 1.0, "t2i_recall@1": 1.0, "t2i_recall@2": 1.0}
    text = feats[torch.tensor([1, 0, 2, 3])]  # texts 0 and 1 swapped
    r = retrieval_recall(feats, text, ks=(1,))
    assert r["i2t_recall@1"] == 0.5 and r["t2i_recall@1"] == 0.5
    # identical captions are interchangeable answers when grouped
    r = retrieval_recall(feats, text, ks=(1,), groups=group_ids(["cat", "cat", "dog", "owl"]))
    assert r["i2t_recall@1"] == 1.0 and r["t2i_recall@1"] == 1.0
    assert group_ids(["x", "y", "x"]).tolist() == [0, 1, 0]


def test_linear_probe_separable_and_chance():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 4
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) > 0.97
    noise = torch.randn(400, 16, generator=g)
    assert linear_probe(noise[:300], y[:300], noise[300:], y[300:]) < 0.5
