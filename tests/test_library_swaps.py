"""Where mmfm now calls a library instead of its own copy, the library gives what the old code gave: torch's
RMSNorm (the old formula and its saved parameter names), timm's resample_abs_pos_embed (the old bicubic resample,
bit for bit). The old code is kept here only as the reference. (ClipLoss: tests/test_clip_loss.py, EMA:
tests/test_ema_swap.py.)"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmfm
from mmfm.adapt.head import resize_input
from mmfm.nn import RMSNorm, build_norm


class OldRMSNorm(nn.Module):
    """mmfm's hand-written RMSNorm before torch.nn.RMSNorm replaced it (verbatim)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x):
        y = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype)
        return y * self.weight if self.weight is not None else y


def old_resample_pos_2d(pos, old_hw, new_hw):
    """mmfm's resample_pos_2d before timm's resample_abs_pos_embed replaced it (verbatim)."""
    if tuple(old_hw) == tuple(new_hw):
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, old_hw[0], old_hw[1], d).permute(0, 3, 1, 2)  # (1, D, H, W)
    grid = F.interpolate(grid.float(), size=new_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_hw[0] * new_hw[1], d).to(pos.dtype)  # (N', D)


# float64: the old code took the rsqrt in float32 even there (torch's is float64 throughout: checked exactly below)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_is_torchs_and_equals_the_old_formula(dtype, tol, affine):
    torch.manual_seed(0)
    new, old = build_norm("rmsnorm", 48, eps=1e-5, affine=affine), OldRMSNorm(48, eps=1e-5, affine=affine)
    assert isinstance(new, nn.RMSNorm) and isinstance(new, RMSNorm)
    if affine:
        with torch.no_grad():
            old.weight.normal_()
        new.load_state_dict(old.state_dict())  # the old parameter name, loaded strictly
    assert new.state_dict().keys() == old.state_dict().keys()
    new, old = new.to(dtype), old.to(dtype)
    x = (torch.randn(3, 5, 48) * 4).to(dtype)
    torch.testing.assert_close(new(x), old(x), atol=tol, rtol=tol)
    if dtype == torch.float64:
        exact = x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * (old.weight if affine else 1)
        torch.testing.assert_close(new(x), exact, atol=1e-12, rtol=1e-12)


def test_model_saved_with_the_old_rmsnorm_loads_and_decodes_alike(tmp_path):
    """A GPT folder written while mmfm had its own RMSNorm (same keys) loads into torch's, with the same logits on
    the module path and on the fast decode path."""
    torch.manual_seed(0)
    model = mmfm.build_model("gpt-test", norm="rmsnorm", pos="rope", mlp="swiglu", bias=False).eval()
    old = mmfm.build_model("gpt-test", norm="rmsnorm", pos="rope", mlp="swiglu", bias=False).eval()
    for name, m in list(old.named_modules()):  # the old model: every norm the hand-written one
        for child, mod in list(m.named_children()):
            if isinstance(mod, nn.RMSNorm):
                setattr(m, child, OldRMSNorm(mod.normalized_shape[0], mod.eps))
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))
    old.save_pretrained(tmp_path / "old")
    loaded = mmfm.build_model(tmp_path / "old").eval()
    ids = torch.randint(0, old.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), old(ids), atol=1e-5, rtol=1e-5)
        caches = loaded.transformer.new_caches(2, 10)
        loaded(ids, caches=caches)  # prefill
        nxt = torch.tensor([3, 4])
        fast = loaded.decoder(caches)(nxt, 9, torch.full((2,), 9), None)
        ref = old(torch.cat([ids, nxt[:, None]], 1))[:, -1]  # (2, V), the old model without a cache
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize("hw", [(4, 4), (6, 6), (3, 3), (2, 5)])
def test_vit_positions_resample_like_the_old_code(class_token, hw):
    torch.manual_seed(0)
    vit = mmfm.build_model("vit-test", class_token=class_token, pool="cls" if class_token else "mean")  # 4x4 grid
    n = 1 if class_token else 0
    old = torch.cat([vit.pos_embed[:, :n], old_resample_pos_2d(vit.pos_embed[0, n:], (4, 4), hw)[None]], dim=1)
    assert torch.equal(vit._pos(*hw), old)
    images = torch.randn(2, 3, 8 * hw[0], 8 * hw[1])
    assert vit(images).shape == (2, 10)


def test_resized_backbone_table_is_the_old_resample():
    torch.manual_seed(0)
    vit = mmfm.build_model("vit-test")
    old = torch.cat([vit.pos_embed[:, :1], old_resample_pos_2d(vit.pos_embed[0, 1:], (4, 4), (7, 7))[None]], dim=1)
    resize_input(vit, 56)
    assert vit.config.img_size == 56 and torch.equal(vit.pos_embed.data, old)
