"""open_clip ViT CLIP <-> mmfm CLIP, both ways, image and text towers and logit scale.

open_clip's layout: nn.MultiheadAttention (in_proj_weight = [q; k; v], out_proj), ln_1/ln_2, mlp.c_fc/c_proj,
visual.conv1 (no bias), class_embedding, ln_pre, ln_post (on every token before cls pooling), proj; the text
tower under the model's root with a causal attn_mask, ln_final and pooling at the end-of-text token. mmfm pools
at the first end-of-text id (`config.eot_id`); open_clip pools at the argmax of the ids (right when end-of-text
is the largest id, as in CLIP BPE) or, with text_pool_type='eos', at the first `text_eos_id`: a model whose
end-of-text id is not the largest (a byte-level BPE with eot id 1) exports with 'eos' pooling and its id.
Rows without an end-of-text token differ: mmfm pools the last position, open_clip the first (eos) or the
largest id (argmax); mmfm's tokenizers always append one.

    clip = from_open_clip(open_clip.create_model("ViT-B-32", pretrained=None))  # or "ViT-B-32-quickgelu"
    oc = to_open_clip(clip)        # an open_clip.model.CLIP, runs in open_clip
"""
from __future__ import annotations

import torch

from ..models.clip import CLIP, CLIPConfig

_BLOCK = {  # open_clip ResidualAttentionBlock -> mmfm Block
    "ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_TOP = {  # everything outside the blocks
    "visual.conv1.weight": "visual.patch_embed.proj.weight", "visual.class_embedding": "visual.cls_token",
    "visual.positional_embedding": "visual.pos_embed", "visual.ln_pre": "visual.norm_pre",
    "visual.ln_post": "visual.transformer.norm", "visual.proj": "visual_proj",
    "token_embedding.weight": "text.token_embedding.weight", "positional_embedding": "text.pos_embed",
    "ln_final": "text.transformer.norm", "text_projection": "text_proj", "logit_scale": "logit_scale",
    "logit_bias": "logit_bias",  # SigLIP-trained models
}


_PREFIXES = (("visual.transformer.resblocks.", "visual.transformer.blocks."),
             ("transformer.resblocks.", "text.transformer.blocks."))


def _map_key(key: str, prefixes, block: dict, top: dict, side: str) -> str:
    """Rename one state-dict key: block keys under `prefixes` through `block`, the rest through `top`."""
    for prefix, new in prefixes:
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            for old, mm in block.items():
                if rest == old or rest.startswith(old + "."):
                    return f"{new}{idx}.{mm}{rest[len(old):]}"
    for old, new in top.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    raise KeyError(f"{side} key {key!r} has no counterpart")


def _rename(key: str) -> str:
    return _map_key(key, _PREFIXES, _BLOCK, _TOP, "open_clip")


def _check_supported(model) -> None:
    import torch.nn as nn
    from open_clip.transformer import QuickGELU, VisionTransformer

    if not isinstance(getattr(model, "visual", None), VisionTransformer):
        raise ValueError(f"only open_clip CLIP models with a ViT image tower convert; this one has "
                         f"{type(getattr(model, 'visual', None)).__name__} (ResNet CLIPs such as RN50 are not supported)")
    if not hasattr(model, "token_embedding"):
        raise ValueError("only open_clip CLIP models with the built-in text tower convert (not an HF text tower)")
    v = model.visual
    if v.attn_pool is not None or v.pool_type != "tok" or v.final_ln_after_pool:
        raise ValueError("only class-token pooling with ln_post before pooling is supported")
    if model.text_pool_type not in ("argmax", "eos") or isinstance(model.text_projection, nn.Linear):
        raise ValueError(f"only end-of-text text pooling ('argmax' or 'eos') and a bias-free text projection are "
                         f"supported; this model has text_pool_type={model.text_pool_type!r}")
    block = v.transformer.resblocks[0]
    if block.ln_1.eps != 1e-5 or not isinstance(block.ls_1, nn.Identity):
        raise ValueError("only LayerNorm eps=1e-5 and no layer scale (ls_init_value=None) are supported")
    act = block.mlp.gelu
    if not isinstance(act, (nn.GELU, QuickGELU)) or getattr(act, "approximate", "none") != "none":
        raise ValueError(f"MLP activation {act!r} is not supported; mmfm converts exact GELU and QuickGELU")


def config_from_open_clip(model) -> CLIPConfig:
    _check_supported(model)
    v, sd = model.visual, model.state_dict()
    vblock, tblock = v.transformer.resblocks[0], model.transformer.resblocks[0]
    width, text_width = v.conv1.out_channels, model.token_embedding.embedding_dim
    if vblock.mlp.c_fc.out_features / width != tblock.mlp.c_fc.out_features / text_width:
        raise ValueError("image and text towers with different mlp_ratio are not supported")
    size = v.image_size[0] if isinstance(v.image_size, tuple) else v.image_size
    vocab = sd["token_embedding.weight"].shape[0]
    return CLIPConfig(
        embed_dim=v.proj.shape[1], img_size=size, patch_size=v.conv1.kernel_size[0], in_chans=v.conv1.in_channels,
        vision_width=width, vision_layers=len(v.transformer.resblocks), vision_heads=vblock.attn.num_heads,
        vocab_size=vocab, context_length=model.context_length, text_width=text_width,
        text_layers=len(model.transformer.resblocks), text_heads=tblock.attn.num_heads,
        mlp_ratio=vblock.mlp.c_fc.out_features / width, eot_token_id=_eot_id(model, vocab),
        tokenizer="clip" if model.text_pool_type == "argmax" else "bpe",
        mlp="gelu" if isinstance(vblock.mlp.gelu, torch.nn.GELU) else "quick_gelu",
        init_logit_scale=float(model.logit_scale.detach()),
        init_logit_bias=None if getattr(model, "logit_bias", None) is None else float(model.logit_bias.detach()),
    )


def _eot_id(model, vocab: int) -> int:
    """mmfm's eot_token_id for open_clip's pooling: -1 (the largest id) for argmax, the model's id for eos."""
    if model.text_pool_type == "argmax":
        return -1
    eos = int(model.text_eos_id)
    if not 0 <= eos < vocab:
        raise ValueError(f"text_eos_id {eos} is outside the vocabulary [0, {vocab})")
    return eos


def from_open_clip(model) -> CLIP:
    """An open_clip ViT CLIP (e.g. open_clip.create_model("ViT-B-32")) -> an mmfm CLIP with the same outputs.
    With argmax text pooling the tokenizer is open_clip's CLIP BPE (mmfm.tokenizers.ClipTokenizer); with 'eos'
    pooling the end-of-text id is the model's `text_eos_id` and no tokenizer is attached (set `.tokenizer`)."""
    from ..tokenizers import ClipTokenizer

    cfg = config_from_open_clip(model)
    clip = CLIP(cfg)
    sd = {}
    for k, v in model.state_dict().items():
        if k == "attn_mask":
            continue
        new = _rename(k)
        if k == "visual.class_embedding":
            v = v.reshape(1, 1, -1)  # (W,) -> (1, 1, W)
        elif k == "visual.positional_embedding":
            v = v[None]  # (N + 1, W) -> (1, N + 1, W)
        sd[new] = v
    clip.load_state_dict(sd, strict=True)
    if model.text_pool_type == "argmax":  # CLIP BPE's layout; an 'eos' model's tokenizer is not known here
        clip.tokenizer = ClipTokenizer(cfg.context_length)
    return clip.train(model.training)


def _open_clip_state(clip: CLIP) -> dict:
    inverse_top = {v: k for k, v in _TOP.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    out = {}
    for k, v in clip.state_dict().items():
        if k == "visual.cls_token":
            v = v.reshape(-1)  # (1, 1, W) -> (W,)
        elif k == "visual.pos_embed":
            v = v[0]  # (1, N + 1, W) -> (N + 1, W)
        out[_inverse_key(k, inverse_top, inverse_block)] = v
    w = out["visual.conv1.weight"]
    if w.shape[1] == 1:  # a grayscale mmfm model -> open_clip's RGB conv: identical on gray (R=G=B) inputs
        out["visual.conv1.weight"] = w.expand(-1, 3, -1, -1) / 3
    return out


def _inverse_key(k: str, inverse_top: dict, inverse_block: dict) -> str:
    return _map_key(k, [(new, old) for old, new in _PREFIXES], inverse_block, inverse_top, "mmfm")


def to_open_clip(clip: CLIP):
    """An mmfm CLIP -> open_clip.model.CLIP with the same weights (1-channel models get an RGB conv whose
    output on gray images is unchanged). Text pooling: 'argmax' when the end-of-text id is the largest id
    (CLIP BPE), else 'eos' with `text_eos_id` = the model's end-of-text id; encode_text then equals mmfm's on
    every row that holds an end-of-text token."""
    import open_clip

    c = clip.config
    if c.vision_width % c.vision_heads:
        raise ValueError("vision_width must be divisible by vision_heads")
    if getattr(c, "decoder_layers", 0):
        raise ValueError(f"decoder_layers={c.decoder_layers}: a CoCa model's caption decoder has no open_clip.CLIP "
                         "counterpart; to export the contrastive part alone, copy it into a plain CLIP first: "
                         "plain = CLIP(clip.config.replace(decoder_layers=0)); "
                         "plain.load_state_dict(clip.state_dict(), strict=False)")
    model = open_clip.model.CLIP(
        embed_dim=c.embed_dim,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=c.vision_layers, width=c.vision_width,
                                                 head_width=c.vision_width // c.vision_heads, mlp_ratio=c.mlp_ratio,
                                                 patch_size=c.patch_size, image_size=c.img_size),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=c.context_length, vocab_size=c.vocab_size,
                                             width=c.text_width, heads=c.text_heads, layers=c.text_layers,
                                             mlp_ratio=c.mlp_ratio, eos_id=c.eot_id,
                                             pool_type="argmax" if c.eot_id == c.vocab_size - 1 else "eos"),
        init_logit_scale=float(clip.logit_scale.detach()), quick_gelu=c.mlp == "quick_gelu",
        init_logit_bias=None if clip.logit_bias is None else float(clip.logit_bias.detach()),
    )
    model.load_state_dict(_open_clip_state(clip), strict=True)
    return model.train(clip.training)


@torch.no_grad()
def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
