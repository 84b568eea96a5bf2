"""timm VisionTransformer (vit_*_patch16_* layouts) <-> mmfm ViT, both ways.

timm's ViT and mmfm's share names almost everywhere (timm's PatchEmbed, blocks.N.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}); the stack lives under `transformer.` in mmfm. Class-token or average pooling,
fc_norm, layer scale and a pre-norm are carried over; registers, attention pooling, q/k norms and
class-token-free position tables are refused with a clear error.

    vit = from_timm_vit(timm.create_model("vit_base_patch16_224", pretrained=False))
    tv = to_timm_vit(vit)          # a timm VisionTransformer
"""
from __future__ import annotations

import functools

import torch.nn as nn

from ..models.vit import ViT, ViTConfig

_STACK = ("blocks.", "norm.")


def _check_supported(model) -> None:
    if getattr(model, "num_reg_tokens", 0) or getattr(model, "no_embed_class", False):
        raise ValueError("register tokens and no_embed_class position tables are not supported")
    if model.global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool={model.global_pool!r} is not supported (use 'token' or 'avg')")
    blk = model.blocks[0]
    if not isinstance(blk.attn.q_norm, nn.Identity) or not isinstance(getattr(blk, "norm1", None), nn.LayerNorm):
        raise ValueError("only LayerNorm blocks without q/k norm are supported")
    if not isinstance(blk.mlp.act, nn.GELU) or getattr(blk.mlp.act, "approximate", "none") != "none":
        raise ValueError(f"MLP activation {blk.mlp.act} is not supported (exact GELU only)")
    if not isinstance(getattr(blk.mlp, "norm", nn.Identity()), nn.Identity):
        raise ValueError("an MLP norm (scale_mlp_norm) is not supported")
    if not isinstance(getattr(blk.attn, "norm", nn.Identity()), nn.Identity):
        raise ValueError("an attention-output norm (scale_attn_norm) is not supported")
    if not isinstance(model.patch_embed.norm, nn.Identity):
        raise ValueError("a patch-embedding norm is not supported")


def config_from_timm_vit(model) -> ViTConfig:
    _check_supported(model)
    blk, pe = model.blocks[0], model.patch_embed
    dim = model.embed_dim
    ls = blk.ls1.gamma.detach().flatten()[0].item() if hasattr(blk.ls1, "gamma") else None
    head = model.head
    return ViTConfig(
        img_size=pe.img_size[0], patch_size=pe.patch_size[0], in_chans=pe.proj.in_channels, dim=dim,
        depth=len(model.blocks), n_heads=blk.attn.num_heads, mlp_ratio=blk.mlp.fc1.out_features / dim,
        norm_eps=blk.norm1.eps, pool="cls" if model.global_pool == "token" else "mean",
        class_token=model.cls_token is not None, pre_norm=not isinstance(model.norm_pre, nn.Identity),
        num_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        patch_bias=pe.proj.bias is not None, fc_norm=not isinstance(model.fc_norm, nn.Identity), ls_init=ls,
    )


def _to_mmfm_key(k: str) -> str:
    return "transformer." + k if k.startswith(_STACK) else k


def from_timm_vit(model) -> ViT:
    """A timm VisionTransformer -> an mmfm ViT with the same logits (or pooled features if it has no head)."""
    cfg = config_from_timm_vit(model)
    vit = ViT(cfg)
    sd = {_to_mmfm_key(k): v for k, v in model.state_dict().items()}
    vit.load_state_dict(sd, strict=True)
    return vit.train(model.training)


def to_timm_vit(vit: ViT):
    """An mmfm ViT -> timm.models.vision_transformer.VisionTransformer with the same weights."""
    from timm.models.vision_transformer import VisionTransformer

    c = vit.config
    model = VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
        global_pool="token" if c.pool == "cls" else "avg", embed_dim=c.dim, depth=c.depth, num_heads=c.n_heads,
        mlp_ratio=c.mlp_ratio, qkv_bias=True, init_values=c.ls_init, class_token=c.class_token,
        pre_norm=c.pre_norm, fc_norm=c.fc_norm, norm_layer=functools.partial(nn.LayerNorm, eps=c.norm_eps),
    )
    if not c.patch_bias:
        model.patch_embed.proj.bias = None
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in vit.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    return model.train(vit.training)
