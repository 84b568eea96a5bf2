"""Zero-shot classification: a classifier from prompt templates (mean of normalised class embeddings)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tokenize(tokenizer, texts: list[str], context_length: int) -> torch.Tensor:
    """Texts -> ids (N, T) cut to the longest row (exact for a causal tower pooled at end-of-text)."""
    from ..data.webdata import trim_padding

    ids, mask = tokenizer.encode_batch(list(texts), max_len=context_length, pad_to_max=True)
    return trim_padding(ids, mask)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    """(N, E) normalised text embeddings."""
    device = next(model.parameters()).device
    out = [model.encode_text(tokenize(tokenizer, texts[i:i + batch_size], model.config.context_length).to(device))
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out).float()


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, C, H, W) preprocessed images -> (N, E) normalised image embeddings."""
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(images[i:i + batch_size].to(device)).float()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def zeroshot_classifier(model, tokenizer, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(C, E): for each class, the renormalised mean of its normalised prompt embeddings."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts).view(len(classnames), len(templates), -1)  # (C, P, E)
    return F.normalize(emb.mean(dim=1), dim=-1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """{"top1": .., "top5": ..}: fraction of rows whose label is among the k highest logits (computed on the
    logits' device)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, kmax)
    hits = top == labels.to(top.device)[:, None]
    return {f"top{k}": hits[:, :k].any(1).float().mean().item() for k in ks}


def zeroshot_accuracy(model, tokenizer, image_features: torch.Tensor, labels: torch.Tensor, classnames: list[str],
                      templates: list[str], ks=(1, 5)) -> dict[str, float]:
    """Top-k accuracy of the prompt-ensemble classifier on precomputed normalised image features (N, E), on the
    features' device and dtype."""
    weights = zeroshot_classifier(model, tokenizer, classnames, templates).to(image_features)
    return topk_accuracy(image_features @ weights.T, labels, ks)
