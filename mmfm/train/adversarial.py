"""Adversarial losses shared by the VAE and GAN tasks: hinge losses and latent diffusion's adaptive weight."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))) (halved, as in taming)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean(D(fake))."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """Latent diffusion's (taming's) balance: |grad rec_loss| / (|grad g_loss| + 1e-4) at the decoder's last
    layer, clamped to [0, max_weight] and detached, so the adversarial gradient never swamps reconstruction."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def gan_factor(step: int, start: int) -> float:
    """The adversarial term's switch: 0 during the warm-up (step < start), 1 after."""
    return 1.0 if step >= start else 0.0
