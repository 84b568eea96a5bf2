"""Volumetric patch embedding: cubic patches of a (B, C, D, H, W) volume -> tokens (B, N, dim), and the 3-D
resampling of a learned position table to another D x H x W token grid."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchEmbed3d", "resample_pos_3d"]


class PatchEmbed3d(nn.Module):
    """A Conv3d with kernel = stride = patch_size (timm's PatchEmbed in 3-D): (B, C, D, H, W) -> (B, N, dim),
    tokens in D, H, W raster order (N = D/p * H/p * W/p); `grid(shape)` gives the token grid of a volume."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def grid(self, shape) -> tuple[int, int, int]:
        """(D, H, W) voxels -> (D/p, H/p, W/p) tokens; a side not divisible by the patch size is refused."""
        p = self.patch_size
        if len(shape) != 3 or any(s % p or s < 1 for s in shape):
            raise ValueError(f"volume sides {tuple(shape)} must be 3 positive multiples of the patch size {p}")
        return tuple(s // p for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"PatchEmbed3d takes volumes (B, C, D, H, W), got shape {tuple(x.shape)}")
        self.grid(x.shape[2:])
        x = self.proj(x)  # (B, dim, D/p, H/p, W/p)
        return x.flatten(2).transpose(1, 2).contiguous()  # (B, N, dim), contiguous like mmfm's PatchEmbed


def resample_pos_3d(table: torch.Tensor, new_grid, old_grid, num_prefix_tokens: int = 0) -> torch.Tensor:
    """A position table (1, n_prefix + d*h*w, dim) for an old_grid (d, h, w) -> the table for new_grid
    (trilinear; prefix rows kept). The same grid returns the table itself."""
    new_grid, old_grid = tuple(new_grid), tuple(old_grid)
    if new_grid == old_grid:
        return table
    prefix, grid = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    dim = table.shape[-1]
    grid = grid.reshape(1, *old_grid, dim).permute(0, 4, 1, 2, 3)  # (1, dim, d, h, w)
    grid = F.interpolate(grid, size=new_grid, mode="trilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)  # (1, D*H*W, dim)
    return torch.cat([prefix, grid], dim=1)
