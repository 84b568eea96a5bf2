"""All CLIP evaluations on a shard set: zero-shot per source, retrieval, linear probe. Works on any shards
written by mmfm.data.imagetext (class names and prompts are read from the shard folder's classes.json)."""
from __future__ import annotations

import logging

import torch

from ..data.imagetext import read_classes
from ..data.webdata import Collate, image_transform, load_all, shard_dir
from .linear_probe import linear_probe
from .retrieval import group_ids, retrieval_recall
from .zeroshot import encode_images, encode_texts, zeroshot_accuracy

log = logging.getLogger(__name__)


def load_split(model, urls, tokenizer=None) -> dict:
    """Every sample of `urls`, preprocessed for `model` (no augmentation)."""
    tok = tokenizer or model.tokenizer
    return load_all(urls, image_transform(model.config, train=False), Collate(tok, model.config.context_length))


@torch.no_grad()
def evaluate_clip(model, test_urls, train_urls=None, tokenizer=None, ks=(1, 5), classes: dict | None = None,
                  max_retrieval: int = 5000) -> dict:
    """Flat metrics: zeroshot_top{k}/<source>, linear_probe/<source> (if train_urls), i2t/t2i_recall@k (strict:
    byte-identical captions count as the same answer) and i2t/t2i_class@k (any caption of the right class)."""
    tok = tokenizer or model.tokenizer
    was_training = model.training
    model.eval()
    test = load_split(model, test_urls, tok)
    img = encode_images(model, test["images"])
    classes = classes if classes is not None else read_classes(shard_dir(test_urls))
    metrics = {}
    sources = sorted(set(test["sources"]))
    for src in sources:
        rows = torch.tensor([s == src for s in test["sources"]])
        if src in classes and rows.any():
            acc = zeroshot_accuracy(model, tok, img[rows], test["labels"][rows], classes[src]["classnames"],
                                    classes[src]["prompts"], ks)
            metrics.update({f"zeroshot_{k}/{src}": v for k, v in acc.items()})
    n = min(len(img), max_retrieval)
    txt = encode_texts(model, tok, test["captions"][:n])
    metrics.update(retrieval_recall(img[:n], txt, ks, group_ids(test["captions"][:n])))
    keys = [f"{s}:{lab}" for s, lab in zip(test["sources"][:n], test["labels"][:n].tolist())]
    cls = retrieval_recall(img[:n], txt, ks, group_ids(keys))
    metrics.update({k.replace("recall", "class"): v for k, v in cls.items()})
    if train_urls is not None:
        metrics.update(probe_by_source(model, train_urls, test, img, tok))
    model.train(was_training)
    return metrics


def probe_by_source(model, train_urls, test: dict, test_img: torch.Tensor, tok) -> dict:
    """linear_probe/<source>: logistic regression on frozen (unnormalised-direction) image embeddings."""
    train = load_split(model, train_urls, tok)
    train_img = encode_images(model, train["images"])
    out = {}
    for src in sorted(set(test["sources"])):
        tr = torch.tensor([s == src for s in train["sources"]])
        te = torch.tensor([s == src for s in test["sources"]])
        if tr.any() and te.any() and (train["labels"][tr] >= 0).all():
            out[f"linear_probe/{src}"] = linear_probe(train_img[tr], train["labels"][tr], test_img[te],
                                                      test["labels"][te])
    return out
