"""A second stage for the detector (R-CNN's idea on a one-stage detector): FCOS proposes boxes, a crop classifier
names what is in each. The classifier is the backbone's pretraining classifier (mmfm.detect.pretrain), trained on
crops of train-split sources only, so the second stage sees nothing the detector's training did not.

    preds = predict(detector, loader)[0]                 # FCOS: per-class boxes, scores, labels
    preds = rescore(preds, images, classifier)           # class-agnostic boxes, classes from the crop classifier

Per image: the detector's boxes are merged across classes (class-agnostic NMS, the box keeping its best score as
objectness), each box's square surround is cropped at a few context sizes and resized to the classifier's input
(torchvision's roi_align), the class probabilities are averaged over them, and the box is emitted once per top-k
class with score objectness^power x p(class | crops).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import opt


@dataclass
class RescoreConfig:
    # crop side / the box's longer side (pretraining objects fill ~60-90% of a crop); the class probabilities are
    # averaged over these crops (round ten, val: (1.3, 1.45) mAP@0.5 0.815, 1.45 alone 0.792)
    contexts: tuple[float, ...] = (1.3, 1.45)
    nms_iou: float = opt(0.4, gt=0.0, hi=1.0)  # class-agnostic NMS over the detector's boxes
    top_k: int = opt(5, lo=1)  # classes emitted per box
    max_boxes: int = opt(20, lo=1)  # boxes per image kept for the classifier (highest objectness first)
    power: float = opt(1.0, lo=0.0)  # weight of the detector's objectness in the final score

    def __post_init__(self):
        self.contexts = tuple(float(c) for c in (self.contexts if isinstance(self.contexts, (tuple, list))
                                                 else (self.contexts,)))
        if not self.contexts or min(self.contexts) <= 1.0:
            raise ValueError(f"contexts={self.contexts}: one or more crop/box side ratios, each > 1")


def box_crops(images: torch.Tensor, boxes: list[torch.Tensor], side: int, context: float) -> torch.Tensor:
    """images (B, C, H, W) in [0, 1], boxes[b] (K_b, 4) xyxy -> crops (sum K_b, C, side, side) in [-1, 1]: the
    square of side context x max(w, h) around each box centre (outside the image: black)."""
    from torchvision.ops import roi_align

    rois = []
    for b in boxes:
        centre = (b[:, :2] + b[:, 2:]) / 2  # (K, 2)
        half = (b[:, 2:] - b[:, :2]).amax(dim=1, keepdim=True) * (context / 2)  # (K, 1)
        rois.append(torch.cat([centre - half, centre + half], dim=1))  # (K, 4)
    crops = roi_align(images, rois, output_size=side, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return crops * 2 - 1


def merge_classes(pred: dict, cfg: RescoreConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's detections -> (boxes (K, 4), objectness (K,)): class-agnostic NMS, at most cfg.max_boxes."""
    from torchvision.ops import nms

    keep = nms(pred["boxes"].float(), pred["scores"].float(), cfg.nms_iou)[: cfg.max_boxes]
    return pred["boxes"][keep], pred["scores"][keep]


@torch.no_grad()
def rescore(preds: list[dict], images: torch.Tensor | list, classifier: torch.nn.Module,
            cfg: RescoreConfig | None = None, side: int = 32, batch: int = 512) -> list[dict]:
    """Replace each image's class decisions by the crop classifier's; boxes come from the detector.
    images: (B, C, H, W) in [0, 1] (or a list of (C, H, W)); side: the classifier's input side (its pretraining
    crops'); returns new prediction dicts (boxes, scores, labels)."""
    cfg = cfg or RescoreConfig()
    images = torch.stack(list(images)) if not torch.is_tensor(images) else images
    merged = [merge_classes(p, cfg) for p in preds]
    boxes = [b for b, _ in merged]
    if not sum(len(b) for b in boxes):
        return [{"boxes": b, "scores": s, "labels": torch.zeros(0, dtype=torch.long)} for b, s in merged]
    classifier.eval()
    probs = sum(torch.cat([classifier(c).softmax(-1) for c in box_crops(images, boxes, side, ctx).split(batch)])
                for ctx in cfg.contexts) / len(cfg.contexts)  # (N, classes), averaged over the crop contexts
    k = min(cfg.top_k, probs.shape[-1])
    out, start = [], 0
    for b, obj in merged:
        p = probs[start:start + len(b)]
        start += len(b)
        top_p, top_c = p.topk(k, dim=-1)  # (K, k)
        scores = obj.float()[:, None].pow(cfg.power) * top_p  # (K, k)
        out.append({"boxes": b.repeat_interleave(k, dim=0), "scores": scores.flatten(),
                    "labels": top_c.flatten()})
    return out


def save_classifier(classifier: torch.nn.Module, meta: dict, folder) -> None:
    """<folder>/classifier.safetensors + classifier.json (meta: backbone, num_classes, side, rescore config)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classifier.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(folder / "classifier.safetensors"))


def load_classifier(folder) -> tuple[torch.nn.Module, RescoreConfig, int] | None:
    """(classifier in eval mode, RescoreConfig, side) that `save_classifier` wrote, or None when the folder has none.
    A ViT classifier is rebuilt from the detector's saved ViT config (detector.json)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from ..models.vit import ViT, ViTConfig
    from .pretrain import source_classifier

    folder = Path(folder)
    if not (folder / "classifier.json").is_file():
        return None
    meta = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
    vit = None
    if meta["backbone"] == "vit":
        vit = ViT(ViTConfig.from_dict(json.loads((folder / "detector.json").read_text(encoding="utf-8"))["vit"]))
    clf = source_classifier(meta["backbone"], meta["num_classes"], vit=vit, side=meta["side"])
    clf.load_state_dict(load_file(str(folder / "classifier.safetensors")))
    return clf.eval(), RescoreConfig(**meta["rescore"]), meta["side"]
