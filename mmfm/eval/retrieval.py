"""Image<->text retrieval recall@K on paired features."""
from __future__ import annotations

import torch


def _recall(sims: torch.Tensor, query_groups: torch.Tensor, item_groups: torch.Tensor, ks) -> dict[str, float]:
    """sims (Q, I); a query hits at k when one of its k best items has the query's group."""
    top = sims.topk(min(max(ks), sims.shape[1]), dim=1).indices  # (Q, kmax)
    hits = item_groups[top] == query_groups[:, None]
    return {k: hits[:, :k].any(1).float().mean().item() for k in ks}


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, ks=(1, 5),
                     groups: torch.Tensor | None = None) -> dict[str, float]:
    """Pair i is (image i, text i). Returns {"i2t_recall@k", "t2i_recall@k"}.

    groups (N,): pairs sharing a group are interchangeable answers (e.g. byte-identical captions, whose
    embeddings tie); by default every pair is its own group, the usual definition."""
    n, device = image_features.shape[0], image_features.device
    groups = torch.arange(n, device=device) if groups is None else torch.as_tensor(groups).to(device)
    sims = image_features @ text_features.to(image_features).T  # (N, N)
    i2t, t2i = _recall(sims, groups, groups, ks), _recall(sims.T, groups, groups, ks)
    return {**{f"i2t_recall@{k}": v for k, v in i2t.items()}, **{f"t2i_recall@{k}": v for k, v in t2i.items()}}


def group_ids(keys: list) -> torch.Tensor:
    """Equal keys -> equal integer ids (N,)."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys])
