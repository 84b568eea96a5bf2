"""Segmentation of real medical volumes in 2-D slices or 3-D crops: volumes, slab split, slice and crop sets
(data.py), a UNETR decoder of MONAI blocks on an mmfm ViT, 2-D or with a 3-D patch embedding (unetr.py), MONAI's
U-Net baseline (baseline.py), training task, sliding-window Dice and overlays (task.py)."""
from .baseline import UNET_CHANNELS, UNET_CHANNELS_3D, build_unet, unet_meta
from .data import (DATASETS, LOBES, CropSet3d, SegVolume, SliceSet, SlabSplit, load_brain_lobes, load_ct_bone,
                   load_volume, lobe_lut, read_inv3, slab_of)
from .task import SegTask, dice_ce_loss, dice_per_class, plot_overlays, predict_slices, predict_volume, summary
from .unetr import UNETR, UNETR2d, UNETRConfig, build_unetr, load_segmenter, save_segmenter, token_map, unetr_meta

__all__ = ["UNET_CHANNELS", "UNET_CHANNELS_3D", "build_unet", "unet_meta", "DATASETS", "LOBES", "CropSet3d",
           "SegVolume", "SliceSet", "SlabSplit", "load_brain_lobes", "load_ct_bone", "load_volume", "lobe_lut",
           "read_inv3", "slab_of", "SegTask", "dice_ce_loss", "dice_per_class", "plot_overlays", "predict_slices",
           "predict_volume", "summary", "UNETR", "UNETR2d", "UNETRConfig", "build_unetr", "load_segmenter",
           "save_segmenter", "token_map", "unetr_meta"]
