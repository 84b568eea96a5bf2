"""Where an image classifier looked: Grad-CAM for timm CNNs and mmfm ViTs, attention rollout for ViTs.

Every map is (B, H, W) in [0, 1] at the input image's size.

- Grad-CAM (Selvaraju et al. 2017): ReLU(sum_c mean_xy(d score / d A_c) * A_c) over a spatial feature map A: a timm
  CNN's last feature map (its `forward_features`), or for a ViT the patch tokens entering the LAST block's attention
  (its norm1 output; after the last block only the class token reaches a class-token head), put back on the patch
  grid by `tokens_to_grid`.
- Attention rollout (Abnar & Zuidema 2020): the product over blocks of (mean-over-heads attention + I), rows
  renormalised; the class token's row over the patches (mean over rows without a class token). The attention
  probabilities are recomputed from each block's own qkv projection of its input (a forward hook reads the input;
  the model's fused attention path is unchanged).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.vit import ViT

METHODS = ("gradcam", "rollout")


def tokens_to_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """ViT tokens (B, n_prefix + h * w, D) -> patch-token map (B, D, h, w) (prefix tokens dropped)."""
    B, n, D = tokens.shape
    if n < h * w:
        raise ValueError(f"{n} tokens cannot fill a {h}x{w} grid")
    return tokens[:, n - h * w:].transpose(1, 2).reshape(B, D, h, w)  # (B, D, h, w)


def _is_vit(model: nn.Module) -> bool:
    return isinstance(model, ViT)


def _upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) bilinear, each map scaled to [0, 1] (an all-zero map stays zero)."""
    up = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values.view(-1, 1, 1)
    hi = up.flatten(1).max(1).values.view(-1, 1, 1)
    return (up - lo) / (hi - lo).clamp_min(1e-12)


def _target_scores(logits: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the chosen logits, chosen classes): `target` None = the predicted class (a one-output head: its
    logit)."""
    if logits.shape[1] == 1:
        idx = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    elif target is None:
        idx = logits.argmax(1)
    else:
        idx = torch.as_tensor(target, device=logits.device).long().expand(len(logits))
    return logits.gather(1, idx[:, None]).sum(), idx


def _vit_features(model: ViT, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, activations (B, D, h, w) with grad) of a ViT, the activations taken at the last block's norm1."""
    grabbed = {}

    def hook(_m, _inp, out):
        out.retain_grad()
        grabbed["tokens"] = out

    handle = model.transformer.blocks[-1].norm1.register_forward_hook(hook)
    try:
        logits = model(images)
    finally:
        handle.remove()
    p = model.config.patch_size
    return logits, grabbed["tokens"], (images.shape[-2] // p, images.shape[-1] // p)


def gradcam(model: nn.Module, images: torch.Tensor, target=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (B, H, W) in [0, 1], explained classes (B,)) for an mmfm ViT or a timm network (TimmNet)."""
    was = model.training
    model.eval()
    if images.is_floating_point():  # activations then carry gradients even when every weight is frozen
        images = images.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            if _is_vit(model):
                logits, tokens, (h, w) = _vit_features(model, images)
                score, idx = _target_scores(logits, target)
                model.zero_grad(set_to_none=True)
                score.backward()
                acts, grads = tokens_to_grid(tokens, h, w), tokens_to_grid(tokens.grad, h, w)  # (B, D, h, w)
            elif getattr(getattr(model, "config", None), "family", "") == "timm":
                acts = model.body.forward_features(_timm_input(model, images))  # (B, C, h, w)
                acts.retain_grad()
                logits = model.head(model.body.forward_head(acts))
                score, idx = _target_scores(logits, target)
                model.zero_grad(set_to_none=True)
                score.backward()
                grads = acts.grad
            else:
                raise TypeError(f"Grad-CAM takes an mmfm ViT or a timm network, got {type(model).__name__}")
        weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        cam = F.relu((weights * acts).sum(1)).detach()  # (B, h, w)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return _upsample(cam, images.shape[-2:]), idx.detach()


def _timm_input(model, images: torch.Tensor) -> torch.Tensor:
    """What TimmNet.forward_features gives its body: normalised pixels with the channel count it takes."""
    from ..models.vit import image_tensor

    c = model.config
    x = image_tensor(images, next(model.body.parameters()).dtype, c.image_mean, c.image_std)
    return x.expand(-1, c.in_chans, -1, -1) if x.shape[1] == 1 and c.in_chans != 1 else x


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Self-attention probabilities (B, heads, T, T) of an mmfm Attention for its input x (B, T, C), recomputed
    from its qkv projection (no rotary positions or masks: a ViT's attention)."""
    q, k, _ = (attn._split(t) for t in attn.qkv(x).chunk(3, dim=-1))  # each (B, H, T, Dh)
    return (q @ k.transpose(-2, -1) * attn.head_dim ** -0.5).softmax(-1)


@torch.no_grad()
def rollout(model: nn.Module, images: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention-rollout maps (B, H, W) in [0, 1] of an mmfm ViT; `discard_ratio` zeroes that share of the
    weakest attention weights per row before rolling out (Gildenblat's variant; 0 = the paper's)."""
    if not _is_vit(model):
        raise TypeError(f"attention rollout needs an mmfm ViT (attention layers), got {type(model).__name__}")
    probs = []
    hooks = [blk.attn.register_forward_hook(lambda m, inp, _out: probs.append(attention_probs(m, inp[0])))
             for blk in model.transformer.blocks]
    was = model.training
    model.eval()
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    T = probs[0].shape[-1]
    eye = torch.eye(T, device=probs[0].device)
    result = eye.expand(len(images), T, T)
    for a in probs:
        a = a.mean(1)  # (B, T, T)
        if discard_ratio > 0:
            cut = torch.quantile(a.flatten(1), discard_ratio, dim=1).view(-1, 1, 1)
            a = torch.where(a < cut, torch.zeros_like(a), a)
        a = a + eye
        result = (a / a.sum(-1, keepdim=True)) @ result  # (B, T, T)
    p = model.config.patch_size
    h, w = images.shape[-2] // p, images.shape[-1] // p
    n_prefix = T - h * w
    rows = result[:, 0, n_prefix:] if n_prefix else result.mean(1)  # (B, h * w)
    return _upsample(rows.reshape(-1, h, w), images.shape[-2:])  # (B, h, w) -> (B, H, W)


def explain(model: nn.Module, images: torch.Tensor, method: str = "gradcam", target=None) -> torch.Tensor:
    """Maps (B, H, W) in [0, 1] by `method` (gradcam | rollout)."""
    if method == "gradcam":
        return gradcam(model, images, target)[0]
    if method == "rollout":
        if target is not None:
            raise ValueError("rollout explains no particular class; leave target unset (or use gradcam)")
        return rollout(model, images)
    raise ValueError(f"method={method!r}: choose from {METHODS}")
