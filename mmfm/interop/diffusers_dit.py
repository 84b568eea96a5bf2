"""diffusers DiTTransformer2DModel <-> mmfm DiT (class-conditional), both ways.

The two lay a DiT out the same way (patch conv, fixed 2-D sin-cos positions, adaLN-Zero blocks with six
modulation chunks in the same order, tanh-GELU MLP, final shift/scale + linear, DiT's unpatchify), with four
differences the converter handles:

0. **Position table halves.** diffusers (like the MAE / DiT code) puts the column's sin-cos code in the first
   half of each position vector and the row's in the second; mmfm's `sincos_2d` the other way round. Both
   tables are fixed, so the converter permutes the residual stream instead: every weight that writes the
   stream (patch conv, attention and MLP outputs, adaLN chunks) has its two halves of output rows swapped,
   every weight that reads it (q/k/v, MLP input, final linear) its input columns. LayerNorm without affine
   commutes with the swap, so the functions are equal (the swap is its own inverse: the same map both ways).
1. **Per-block embedders.** Each diffusers block holds its own timestep + label embedder
   (`transformer_blocks.N.norm1.emb`), and the final layer reads block 0's; mmfm's DiT has one shared
   `t_embedder` / `y_embedder`, as the DiT paper does. Converted paper checkpoints (facebook/DiT-XL-2-*) hold
   N equal copies, so `from_diffusers_dit` maps them onto the shared embedders after checking they are equal,
   and refuses (naming the first block that differs) a diffusers model whose copies differ, e.g. one trained
   from scratch in diffusers, where each copy got its own gradients: no mmfm DiT computes that function.
   `to_diffusers_dit` copies the shared embedders into every block (always exact).
2. **Timestep frequencies.** diffusers' DiT embeds t at frequencies 10000^(-i/127) (`Timesteps(...,
   downscale_freq_shift=1)`), the paper (and mmfm by default) at 10000^(-i/128): different functions of t that
   no weight mapping can reconcile. `from_diffusers_dit` therefore sets `DiTConfig.timestep_freq_shift=1`
   (saved with the model). `to_diffusers_dit` of a `timestep_freq_shift=0` model (every model mmfm trains by
   default) sets `downscale_freq_shift=0` on the diffusers instance's time projections: its outputs are equal,
   but diffusers' config cannot record that, so a `save_pretrained` folder would reload with diffusers'
   frequencies; a warning says so. Train with `timestep_freq_shift=1` to export a saveable diffusers model.
3. **Norm epsilon.** mmfm's blocks use LayerNorm eps 1e-6; diffusers' second block norm uses `norm_eps`
   (default 1e-5). `to_diffusers_dit` sets 1e-6; `from_diffusers_dit` warns when it differs.

Refused with a sentence: text or token conditioning (diffusers' DiT takes class labels only), unconditional
models, mlp_ratio != 4, norms other than ada_norm_zero, activations other than gelu-approximate.

    dit = from_diffusers_dit(DiTTransformer2DModel(...))   # or .from_pretrained(folder)
    dm = to_diffusers_dit(dit)                             # forward(x, timestep=t, class_labels=y).sample
"""
from __future__ import annotations

import logging

import torch

from ..models.dit import DiT, DiTConfig

log = logging.getLogger(__name__)

_EMB = "norm1.emb."
_SHARED = {"timestep_embedder.linear_1": "t_embedder.mlp.0", "timestep_embedder.linear_2": "t_embedder.mlp.2"}


def _check_diffusers(dm) -> None:
    from diffusers import DiTTransformer2DModel

    if not isinstance(dm, DiTTransformer2DModel):
        raise ValueError(f"only diffusers DiTTransformer2DModel converts, not {type(dm).__name__}")
    c = dm.config
    for key, want in (("norm_type", "ada_norm_zero"), ("activation_fn", "gelu-approximate"),
                      ("attention_bias", True), ("norm_elementwise_affine", False)):
        if c[key] != want:
            raise ValueError(f"{key}={c[key]!r} is not supported: mmfm's DiT has {key}={want!r}")
    if c.out_channels not in (c.in_channels, 2 * c.in_channels):
        raise ValueError(f"out_channels={c.out_channels}: mmfm's DiT predicts in_channels ({c.in_channels}) or twice "
                         "that (learn_sigma)")
    if c.norm_eps != 1e-6:
        log.warning("diffusers norm_eps=%g: mmfm's DiT blocks use LayerNorm eps 1e-6 (outputs differ slightly)",
                    c.norm_eps)


def _check_shared_embedders(sd: dict, n_layers: int) -> None:
    """Every block's timestep/label embedder must equal block 0's for the shared mmfm embedders to hold them."""
    first = {k[len("transformer_blocks.0." + _EMB):]: v for k, v in sd.items()
             if k.startswith("transformer_blocks.0." + _EMB)}
    for i in range(1, n_layers):
        for name, v in first.items():
            if not torch.equal(sd[f"transformer_blocks.{i}.{_EMB}{name}"], v):
                raise ValueError(f"transformer_blocks.{i}.norm1.emb.{name} differs from block 0's: diffusers' DiT has "
                                 "one timestep/label embedder per block, mmfm's DiT one shared embedder (as the DiT "
                                 "paper); only models whose per-block copies are equal (converted paper checkpoints) "
                                 "convert exactly")


def config_from_diffusers(dm) -> DiTConfig:
    c = dm.config
    return DiTConfig(input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels,
                     hidden_size=c.num_attention_heads * c.attention_head_dim, depth=c.num_layers,
                     num_heads=c.num_attention_heads, mlp_ratio=4.0, num_classes=c.num_embeds_ada_norm,
                     learn_sigma=c.out_channels == 2 * c.in_channels, timestep_freq_shift=1)


def _block_pairs(i: int) -> list[tuple[str, str, str | int]]:
    """(diffusers name, mmfm name, stream role) for block i's unpacked weights (q, k, v are packed in mmfm)."""
    d, m = f"transformer_blocks.{i}.", f"transformer.blocks.{i}."
    return [(d + "norm1.linear", m + "ada.linear", 6), (d + "attn1.to_out.0", m + "attn.proj", "out"),
            (d + "ff.net.0.proj", m + "mlp.fc1", "in"), (d + "ff.net.2", m + "mlp.fc2", "out")]


# role: "out" writes the residual stream (rows swapped), "in" reads it (columns), n: n stream-sized chunks of rows
_TOP = [("pos_embed.proj", "x_embedder.proj", "out"), ("proj_out_1", "final_layer.ada.linear", 2),
        ("proj_out_2", "final_layer.linear", "in")]


def _pairs(depth: int) -> list[tuple[str, str, str | int]]:
    """(diffusers, mmfm, role) of every weight-and-bias pair except the embedders and the packed qkv."""
    return _TOP + [p for i in range(depth) for p in _block_pairs(i)]


def _swap(dim: int) -> torch.Tensor:
    """The stream permutation: the two halves of the hidden dims exchanged (its own inverse)."""
    return torch.cat([torch.arange(dim // 2, dim), torch.arange(dim // 2)])


def _permute(w: torch.Tensor, b: torch.Tensor | None, role, dim: int):
    """(weight, bias) with the residual stream's halves swapped as `role` says (see the module note 0)."""
    perm = _swap(dim)
    if role == "in":
        return w[:, perm], b
    rows = perm if role == "out" else torch.cat([k * dim + perm for k in range(role)])
    return w[rows], None if b is None else b[rows]


def from_diffusers_dit(dm) -> DiT:
    """An mmfm DiT computing what the diffusers DiTTransformer2DModel `dm` computes (in eval mode)."""
    _check_diffusers(dm)
    sd = dm.state_dict()
    cfg = config_from_diffusers(dm)
    _check_shared_embedders(sd, cfg.depth)
    out, D = {}, cfg.hidden_size
    for d, m, role in _pairs(cfg.depth):
        out[m + ".weight"], out[m + ".bias"] = _permute(sd[d + ".weight"], sd[d + ".bias"], role, D)
    for i in range(cfg.depth):
        a, m = f"transformer_blocks.{i}.attn1.", f"transformer.blocks.{i}.attn.qkv."
        w = torch.cat([sd[a + f"to_{k}.weight"] for k in "qkv"])  # (3D, D)
        out[m + "weight"], out[m + "bias"] = _permute(w, torch.cat([sd[a + f"to_{k}.bias"] for k in "qkv"]), "in", D)
    emb = "transformer_blocks.0." + _EMB
    for d, m in _SHARED.items():
        out[m + ".weight"], out[m + ".bias"] = sd[emb + d + ".weight"], sd[emb + d + ".bias"]
    out["y_embedder.table.weight"] = sd[emb + "class_embedder.embedding_table.weight"]
    model = DiT(cfg)
    model.load_state_dict(out, strict=True)
    return model.to(next(dm.parameters()).dtype)


def _check_mmfm(model: DiT) -> None:
    c = model.config
    if c.text_dim or c.context_dim:
        raise ValueError("text-conditioned DiTs (text_dim / context_dim) do not convert: diffusers' "
                         "DiTTransformer2DModel takes class labels only")
    if not c.num_classes:
        raise ValueError("num_classes=0: diffusers' DiTTransformer2DModel is class-conditional")
    if c.mlp_ratio != 4.0:
        raise ValueError(f"mlp_ratio={c.mlp_ratio}: diffusers' DiT blocks have a 4x MLP")


def to_diffusers_dit(model: DiT):
    """A diffusers DiTTransformer2DModel with `model`'s weights (the shared embedders copied into every block)."""
    from diffusers import DiTTransformer2DModel

    _check_mmfm(model)
    c = model.config
    dm = DiTTransformer2DModel(num_attention_heads=c.num_heads, attention_head_dim=c.hidden_size // c.num_heads,
                               in_channels=c.in_channels, out_channels=c.out_channels, num_layers=c.depth,
                               sample_size=c.input_size, patch_size=c.patch_size, num_embeds_ada_norm=c.num_classes,
                               norm_eps=1e-6)
    sd = model.state_dict()
    out, D = {}, c.hidden_size
    for d, m, role in _pairs(c.depth):
        out[d + ".weight"], out[d + ".bias"] = _permute(sd[m + ".weight"], sd[m + ".bias"], role, D)
    for i in range(c.depth):
        a, m = f"transformer_blocks.{i}.attn1.", f"transformer.blocks.{i}.attn.qkv."
        w, _ = _permute(sd[m + "weight"], None, "in", D)  # (3D, D)
        for k, wk, bk in zip("qkv", w.chunk(3), sd[m + "bias"].chunk(3)):
            out[a + f"to_{k}.weight"], out[a + f"to_{k}.bias"] = wk, bk
        emb = f"transformer_blocks.{i}." + _EMB
        for d, m in _SHARED.items():
            out[emb + d + ".weight"], out[emb + d + ".bias"] = sd[m + ".weight"], sd[m + ".bias"]
        out[emb + "class_embedder.embedding_table.weight"] = sd["y_embedder.table.weight"]
    missing, unexpected = dm.load_state_dict(out, strict=False)
    if unexpected or any(not k.endswith("pos_embed.pos_embed") for k in missing):
        raise RuntimeError(f"diffusers DiT layout changed: missing {missing}, unexpected {unexpected}")
    if c.timestep_freq_shift == 0:
        for block in dm.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
        log.warning("the DiT embeds timesteps at the paper's frequencies (timestep_freq_shift=0), which diffusers' "
                    "config cannot express: this instance's time projections are set to match (outputs equal), "
                    "but a save_pretrained folder would reload with diffusers' frequencies; train with "
                    "timestep_freq_shift=1 for a saveable export")
    return dm.to(next(model.parameters()).dtype).train(model.training)
