"""All CLIP evaluations on a held-out set: zero-shot per source, retrieval, linear probe. Works on any shards
written by mmfm.data.imagetext (class names and prompts from the shard folder's classes.json) and on a user's
CSV or folder pairs (a mmfm.data.pairs.PairSet, which carries its classes). Everything runs on the model's
device."""
from __future__ import annotations

import logging

import torch

from ..data.imagetext import read_classes
from ..data.pairs import PairSet, load_pairs
from ..data.webdata import Collate, image_transform, load_all, shard_dir
from .linear_probe import linear_probe
from .retrieval import group_ids, retrieval_recall
from .zeroshot import encode_images, encode_texts, zeroshot_accuracy

log = logging.getLogger(__name__)


def load_split(model, data, tokenizer=None) -> dict:
    """Every sample of `data` (a shard pattern or a PairSet), preprocessed for `model` (no augmentation)."""
    tok = tokenizer or model.tokenizer
    transform, collate = image_transform(model.config, train=False), Collate(tok, model.config.context_length)
    if isinstance(data, PairSet):
        return load_pairs(data, transform, collate)
    return load_all(data, transform, collate)


def classes_of(data) -> dict:
    """{source: {"classnames", "prompts"}} of a shard set (its classes.json) or a PairSet."""
    return data.classes if isinstance(data, PairSet) else read_classes(shard_dir(data))


@torch.no_grad()
def evaluate_clip(model, test, train=None, tokenizer=None, ks=(1, 5), classes: dict | None = None,
                  max_retrieval: int = 5000) -> dict:
    """Flat metrics: zeroshot_top{k}/<source> (sources with class names), linear_probe/<source> (if train),
    i2t/t2i_recall@k (strict: byte-identical captions count as the same answer) and i2t/t2i_class@k (any
    caption of the right class; only over labelled pairs)."""
    tok = tokenizer or model.tokenizer
    was_training = model.training
    model.eval()
    test_set = load_split(model, test, tok)
    img = encode_images(model, test_set["images"])  # (N, E) on the model's device
    labels = test_set["labels"].to(img.device)
    classes = classes if classes is not None else classes_of(test)
    metrics = {}
    for src in sorted(set(test_set["sources"])):
        rows = torch.tensor([s == src for s in test_set["sources"]], device=img.device) & (labels >= 0)
        if src in classes and rows.any():
            acc = zeroshot_accuracy(model, tok, img[rows], labels[rows], classes[src]["classnames"],
                                    classes[src]["prompts"], ks)
            metrics.update({f"zeroshot_{k}/{src}": v for k, v in acc.items()})
    if not any(k.startswith("zeroshot_") for k in metrics):
        log.info("no class names for this data (no classes.json, captions do not repeat): zero-shot skipped, "
                 "retrieval only")
    n = min(len(img), max_retrieval)
    txt = encode_texts(model, tok, test_set["captions"][:n])
    metrics.update(retrieval_recall(img[:n], txt, ks, group_ids(test_set["captions"][:n])))
    metrics.update(class_recall(img[:n], txt, labels[:n], test_set["sources"][:n], ks))
    if train is not None:
        metrics.update(probe_by_source(model, train, test_set, img, tok))
    model.train(was_training)
    return metrics


def class_recall(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, sources: list[str], ks) -> dict:
    """i2t/t2i_class@k over the labelled pairs: a hit is any caption (image) of the query's class."""
    rows = (labels >= 0).nonzero().squeeze(1)
    if len(rows) == 0:
        return {}
    keys = [f"{sources[i]}:{int(labels[i])}" for i in rows.tolist()]
    cls = retrieval_recall(img[rows], txt[rows], ks, group_ids(keys))
    return {k.replace("recall", "class"): v for k, v in cls.items()}


def probe_by_source(model, train, test: dict, test_img: torch.Tensor, tok) -> dict:
    """linear_probe/<source>: logistic regression on frozen (unnormalised-direction) image embeddings."""
    train_set = load_split(model, train, tok)
    train_img = encode_images(model, train_set["images"])
    out = {}
    for src in sorted(set(test["sources"])):
        tr = torch.tensor([s == src for s in train_set["sources"]])
        te = torch.tensor([s == src for s in test["sources"]])
        tr_labels, te_labels = train_set["labels"][tr].to(train_img.device), test["labels"][te].to(test_img.device)
        if tr.any() and te.any() and (tr_labels >= 0).all() and (te_labels >= 0).all():
            out[f"linear_probe/{src}"] = linear_probe(train_img[tr.to(train_img.device)], tr_labels,
                                                      test_img[te.to(test_img.device)], te_labels)
    return out
