"""timm VisionTransformer (vit_*_patch16_* layouts) <-> mmfm ViT, both ways.

timm's ViT and mmfm's share names almost everywhere (timm's PatchEmbed, blocks.N.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}); the stack lives under `transformer.` in mmfm. Class-token or average pooling,
fc_norm, layer scale, a pre-norm, exact or tanh GELU and packed SwiGLU MLPs (timm's SwiGLUPacked: silu of
the first half of fc1 times the second) are carried over both ways; an absent bias (qkv_bias=False, as in
vit_medium_patch16_gap_256) converts as a zero bias. Registers, attention pooling, q/k norms,
class-token-free position tables, DeiT's distillation token and unpacked SwiGLU are refused with a sentence.

    vit = from_timm_vit(timm.create_model("vit_base_patch16_224", pretrained=False))
    tv = to_timm_vit(vit)          # a timm VisionTransformer
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ..models.vit import ViT, ViTConfig

_STACK = ("blocks.", "norm.")


def _mlp_kind(mlp) -> str:
    """mmfm's `mlp` for a timm block's MLP: 'gelu', 'gelu_tanh' or 'swiglu'; a ValueError naming anything else."""
    from timm.layers import GluMlp, Mlp
    from timm.layers.activations import GELU, GELUTanh

    act = getattr(mlp, "act", None)
    if type(mlp) is Mlp and isinstance(act, (nn.GELU, GELU, GELUTanh)):
        tanh = isinstance(act, GELUTanh) or getattr(act, "approximate", "none") == "tanh"
        return "gelu_tanh" if tanh else "gelu"
    if type(mlp) is GluMlp and isinstance(act, nn.SiLU) and not mlp.gate_last:
        return "swiglu"
    raise ValueError(f"the MLP {type(mlp).__name__} with activation {type(act).__name__} is not supported: mmfm's "
                     "ViT has exact or tanh GELU, or a packed SwiGLU (timm's SwiGLUPacked)")


def _check_supported(model) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ValueError(f"only timm VisionTransformer models convert, not {type(model).__name__}")
    if getattr(model, "dist_token", None) is not None:
        raise ValueError("DeiT distilled models are not supported: mmfm's ViT has one class token and one head, "
                         "this model adds a distillation token and a second head")
    if getattr(model, "num_reg_tokens", 0) or getattr(model, "no_embed_class", False):
        raise ValueError("register tokens and no_embed_class position tables are not supported")
    if model.global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool={model.global_pool!r} is not supported (use 'token' or 'avg')")
    blk = model.blocks[0]
    if not isinstance(blk.attn.q_norm, nn.Identity) or not isinstance(getattr(blk, "norm1", None), nn.LayerNorm):
        raise ValueError("only LayerNorm blocks without q/k norm are supported")
    _mlp_kind(blk.mlp)
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
        depth=len(model.blocks), n_heads=blk.attn.num_heads, mlp_ratio=blk.mlp.fc2.in_features / dim,
        mlp=_mlp_kind(blk.mlp),
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
    ours = vit.state_dict()
    for k in ours.keys() - sd.keys():
        if not k.endswith(".bias"):
            raise ValueError(f"timm model has no weight for mmfm's {k}: this layout is not supported")
        sd[k] = torch.zeros_like(ours[k])  # timm built it without a bias (qkv_bias=False): a zero bias is the same
    unexpected = sorted(sd.keys() - ours.keys())
    if unexpected:
        raise ValueError(f"timm weights mmfm's ViT has no place for: {unexpected[:5]}: this layout is not supported")
    vit.load_state_dict(sd, strict=True)
    return vit.train(model.training)


def _timm_mlp(c: ViTConfig) -> dict:
    """timm's MLP arguments for mmfm's `mlp`: exact GELU (timm's default), tanh GELU, or packed SwiGLU."""
    from timm.layers import SwiGLUPacked, get_act_layer

    hidden = int(c.dim * c.mlp_ratio)  # mmfm's inner width (SwiGLU: fc1 holds gate and up, 2 * hidden)
    if c.mlp == "swiglu":  # timm sizes the packed fc1 as int(dim * mlp_ratio): ask for 2 * hidden exactly
        return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "mlp_ratio": (2 * hidden + 0.5) / c.dim}
    if c.mlp == "gelu_tanh":
        return {"act_layer": get_act_layer("gelu_tanh"), "mlp_ratio": (hidden + 0.5) / c.dim}
    if c.mlp == "gelu":
        return {"mlp_ratio": (hidden + 0.5) / c.dim}
    raise ValueError(f"mlp={c.mlp!r} has no timm equivalent")


def to_timm_vit(vit: ViT):
    """An mmfm ViT -> timm.models.vision_transformer.VisionTransformer with the same weights."""
    from timm.models.vision_transformer import VisionTransformer

    c = vit.config
    model = VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, num_classes=c.num_classes,
        global_pool="token" if c.pool == "cls" else "avg", embed_dim=c.dim, depth=c.depth, num_heads=c.n_heads,
        qkv_bias=True, init_values=c.ls_init, class_token=c.class_token,
        pre_norm=c.pre_norm, fc_norm=c.fc_norm, norm_layer=functools.partial(nn.LayerNorm, eps=c.norm_eps),
        **_timm_mlp(c),
    )
    if not c.patch_bias:
        model.patch_embed.proj.bias = None
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in vit.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    return model.train(vit.training)
