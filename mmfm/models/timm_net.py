"""Any timm model as an mmfm image backbone: `build_model("timm:resnet18")`, `--init timm:resnet18` in the recipes.

The timm network (its classifier removed: `num_classes=0`, so it returns pooled features) is `body`; mmfm's task
head is `head`, as on a ViT, so heads, linear probes, LoRA, save_pretrained and build_model(folder) work alike.

    build_model("timm:resnet18", in_chans=1, img_size=64)          # random init
    build_model("timm:resnet18=weights/resnet18.safetensors")     # weights from a file (.safetensors, .pth, .bin)
    build_model("timm:path/to/timm_folder")                       # a timm/Hugging Face folder: config.json
                                                                  # ("architecture") + model.safetensors
Nothing is downloaded: timm is always asked for an untrained network and the weights, when given, come from disk.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..config import ConfigError, ModelConfig, check, opt
from ..registry import register_family
from .base import Model
from .vit import PIXELS, image_tensor

log = logging.getLogger(__name__)
PREFIX = "timm:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class TimmConfig(ModelConfig):
    family = "timm"
    arch: str = "resnet18"  # any name in timm.list_models()
    num_classes: int = opt(0, lo=0)  # 0: pooled features out (the head is an Identity)
    in_chans: int = opt(3, lo=1)
    img_size: int = opt(64, lo=8)  # the input size the data chain resizes to (and timm's img_size where it takes one)
    drop_rate: float = opt(0.0, lo=0.0, lt=1.0)  # dropout before the head, timm's
    image_mean: tuple[float, ...] = PIXELS[0]  # normalisation the pixels get before the network (ImageNet's for timm weights)
    image_std: tuple[float, ...] = PIXELS[1]

    def validate(self) -> None:
        super().validate()
        import timm

        check(timm.is_model(self.arch), f"timm has no model {self.arch!r} (timm.list_models() lists them)")
        check(len(self.image_mean) == len(self.image_std) and all(s > 0 for s in self.image_std),
              f"image_mean/image_std: equal lengths and std > 0, got {self.image_mean} / {self.image_std}")


def _create(cfg: TimmConfig) -> nn.Module:
    import timm

    kwargs = dict(pretrained=False, num_classes=0, in_chans=cfg.in_chans, drop_rate=cfg.drop_rate)
    try:  # transformers in timm (ViT, Swin, ...) are built for a fixed input size
        return timm.create_model(cfg.arch, img_size=cfg.img_size, **kwargs)
    except TypeError:  # CNNs take any size and no img_size argument
        return timm.create_model(cfg.arch, **kwargs)


@register_family
class TimmNet(Model):
    """forward(images (B, C, H, W)) -> logits (B, num_classes), or pooled features (B, num_features) when
    num_classes is 0. uint8 images are scaled with the config's mean/std; a 1-channel image given to a 3-channel
    network is repeated across channels."""

    config_class = TimmConfig

    def __init__(self, config: TimmConfig):
        super().__init__(config)
        self.body = _create(config)
        self.num_features = self.body.num_features
        self.head = nn.Linear(self.num_features, config.num_classes) if config.num_classes else nn.Identity()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> pooled features (B, num_features)."""
        c = self.config
        images = image_tensor(images, next(self.body.parameters()).dtype, c.image_mean, c.image_std)
        if images.shape[1] != c.in_chans:
            if images.shape[1] != 1:
                raise ValueError(f"model takes {c.in_chans}-channel images, got {images.shape[1]} channels")
            images = images.expand(-1, c.in_chans, -1, -1)  # (B, C, H, W)
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))

    def example_inputs(self, batch_size: int = 2) -> dict:
        c = self.config
        return {"images": torch.randn(batch_size, c.in_chans, c.img_size, c.img_size)}


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """'timm:ARCH', 'timm:ARCH=FILE' or 'timm:FOLDER' -> (arch, weights file or None)."""
    rest = spec[len(PREFIX):]
    if not rest:
        raise ConfigError(f"{spec!r}: name a timm model after 'timm:', e.g. timm:resnet18")
    if "=" in rest:
        arch, file = rest.split("=", 1)
        return arch, _existing(Path(file), spec)
    folder = Path(rest)
    if (folder / "config.json").is_file():
        try:
            meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            arch = meta["architecture"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{folder / 'config.json'}: not a timm folder's config (needs 'architecture'): {e}")
        file = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if file is None:
            raise ConfigError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)}) beside config.json")
        return arch, file
    return rest, None


def _existing(file: Path, spec: str) -> Path:
    if not file.is_file():
        raise ConfigError(f"{spec!r}: weights file {file} not found")
    return file


def timm_config(spec: str, **overrides) -> TimmConfig:
    """The config of a 'timm:...' spec; weights from timm's own training bring its mean/std unless overridden."""
    return _config(*parse_spec(spec), **overrides)


def _config(arch: str, file: Path | None, **overrides) -> TimmConfig:
    cfg = TimmConfig(arch=arch)
    if file is not None:
        import timm

        pre = timm.models.get_pretrained_cfg(arch)
        if pre is not None and "image_mean" not in overrides:
            cfg = cfg.replace(image_mean=tuple(pre.mean), image_std=tuple(pre.std))
    return cfg.replace(**overrides) if overrides else cfg


def load_weights(model: TimmNet, file: Path) -> None:
    """timm weights (any classifier in the file is dropped: mmfm's head replaces it)."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if model.config.in_chans != 3:
        from timm.models import adapt_input_conv

        first = model.body.default_cfg.get("first_conv")
        key = f"{first}.weight" if first else None
        if key in state:
            state[key] = adapt_input_conv(model.config.in_chans, state[key])  # summed/repeated over channels
    try:
        missing, unexpected = model.body.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ
        raise ConfigError(f"{file}: weights do not fit timm's {model.config.arch}: {str(e).splitlines()[1].strip()}")
    classifier = model.body.default_cfg.get("classifier", "fc")
    unexpected = [k for k in unexpected if not k.startswith(classifier + ".")]
    if missing or unexpected:
        raise ConfigError(f"{file}: weights do not fit timm's {model.config.arch}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    log.info("loaded %s into timm's %s (%d tensors)", file, model.config.arch, len(state))


def build_timm(spec: str, **overrides) -> TimmNet:
    arch, file = parse_spec(spec)
    model = TimmNet(_config(arch, file, **overrides))
    if file is not None:
        load_weights(model, file)
    return model
