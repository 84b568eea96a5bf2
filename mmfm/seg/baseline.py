"""The from-scratch CNN baseline: MONAI's residual U-Net (monai.networks.nets.UNet) in 2-D or 3-D."""
from __future__ import annotations

import torch.nn as nn

UNET_CHANNELS = (16, 32, 64, 128, 256)
UNET_CHANNELS_3D = (16, 32, 64, 128)  # 3 down-steps: crops 8 slices deep reach 1 voxel


def build_unet(in_channels: int = 1, num_classes: int = 2, channels=UNET_CHANNELS, num_res_units: int = 2,
               spatial_dims: int = 2) -> nn.Module:
    """MONAI's UNet: len(channels) levels, stride-2 down-steps, `num_res_units` residual units per level."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, norm="instance")


def unet_meta(in_channels: int, num_classes: int, classes: list[str], channels=UNET_CHANNELS,
              num_res_units: int = 2, spatial_dims: int = 2) -> dict:
    return {"kind": "unet", "classes": classes,
            "config": {"in_channels": in_channels, "num_classes": num_classes, "channels": list(channels),
                       "num_res_units": num_res_units, "spatial_dims": spatial_dims}}
