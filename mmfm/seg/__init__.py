"""2-D segmentation of real medical volumes: volumes, slab split and slice sets (data.py), a UNETR decoder of MONAI
blocks on an mmfm ViT (unetr.py), MONAI's U-Net baseline (baseline.py), training task, sliding-window Dice and
overlays (task.py)."""
from .baseline import build_unet, unet_meta
from .data import (DATASETS, LOBES, SegVolume, SliceSet, SlabSplit, load_brain_lobes, load_ct_bone, load_volume,
                   lobe_lut, read_inv3, slab_of)
from .task import SegTask, dice_ce_loss, dice_per_class, plot_overlays, predict_slices, summary
from .unetr import UNETR2d, UNETRConfig, build_unetr, load_segmenter, save_segmenter, unetr_meta

__all__ = ["build_unet", "unet_meta", "DATASETS", "LOBES", "SegVolume", "SliceSet", "SlabSplit", "load_brain_lobes",
           "load_ct_bone", "load_volume", "lobe_lut", "read_inv3", "slab_of", "SegTask", "dice_ce_loss",
           "dice_per_class", "plot_overlays", "predict_slices", "summary", "UNETR2d", "UNETRConfig", "build_unetr",
           "load_segmenter", "save_segmenter", "unetr_meta"]
