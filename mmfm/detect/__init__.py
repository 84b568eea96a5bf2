"""Object detection on canvases of real digits and animal silhouettes: data (canvas.py), torchvision FCOS on an
mmfm ViT simple feature pyramid or a timm CNN + FPN (models.py), training task and mAP (task.py), and a second
stage that names each box with the backbone's pretraining classifier (rescore.py)."""
from .canvas import CLASS_NAMES, CanvasConfig, Canvases, augmentation, canvas_sets, collate, split_sources
from .models import (DetectorConfig, TimmPyramid, ViTPyramid, build_detector, default_vit, load_detector,
                     save_detector, tokens_to_grid, trunk_name)
from .pretrain import SourceCrops, init_from_classifier, source_classifier
from .rescore import RescoreConfig, load_classifier, rescore, save_classifier
from .task import DetectTask, mean_ap, plot_detections, predict

__all__ = ["CLASS_NAMES", "CanvasConfig", "Canvases", "augmentation", "canvas_sets", "collate", "split_sources",
           "DetectorConfig", "TimmPyramid", "ViTPyramid", "build_detector", "default_vit", "load_detector",
           "save_detector", "tokens_to_grid", "trunk_name", "DetectTask", "mean_ap",
           "plot_detections", "predict", "SourceCrops", "init_from_classifier", "source_classifier",
           "RescoreConfig", "load_classifier", "rescore", "save_classifier"]
