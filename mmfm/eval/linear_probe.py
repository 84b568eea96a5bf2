"""Linear probe: multinomial logistic regression on frozen features (full-batch L-BFGS in torch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None, l2: float = 1e-4,
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit W (C, D), b (C,) minimising mean cross-entropy + l2 * |W|^2 on standardised features. W and b are
    created on the features' device, in their floating dtype (float32 for integer or half features)."""
    x = features if features.dtype in (torch.float32, torch.float64) else features.float()
    labels = labels.to(x.device)
    n_classes = n_classes or int(labels.max()) + 1
    w = torch.zeros(n_classes, x.shape[1], device=x.device, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(n_classes, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, labels) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2: float = 1e-4) -> float:
    """Test accuracy of a logistic regression fit on (train_x, train_y); features standardised by train stats."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    w, b = fit_logistic((train_x - mean) / std, train_y, int(max(train_y.max(), test_y.max())) + 1, l2)
    pred = (((test_x.to(w) - mean.to(w)) / std.to(w)) @ w.T + b).argmax(1)
    return (pred == test_y.to(pred.device)).float().mean().item()
