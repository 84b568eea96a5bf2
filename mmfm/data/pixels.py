"""The pixel chain of labelled images: one channel count, one size, and values brought to [0, 1] by their dtype
(PixelScale), decided once from the training images and applied to every split (mmfm.data.labelled reads them)."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .formats import DataFormatError
from .medical import scale_intensity_range

if TYPE_CHECKING:
    from .labelled import Examples

log = logging.getLogger(__name__)
MAX_SAMPLES = 4_000_000  # pixel values drawn (strided) for the intensity-range percentiles


@dataclass
class PixelScale:
    """How stored values become [0, 1], decided once from the training images by dtype:
    uint8 / 255 (kept as uint8 until the backbone input); floats already in [0, 1] as they are; a DICOM's own
    window (WindowCenter/Width, applied when read); anything else (16-bit, signed, floats outside [0, 1]) by the
    dataset's intensity range: the 0.5th..99.5th percentile of the training values -> [0, 1], clipped
    (MONAI's ScaleIntensityRange)."""

    mode: str  # "uint8", "unit", "window" or "range"
    lo: float = 0.0
    hi: float = 1.0

    @classmethod
    def fit(cls, images: list[np.ndarray], windowed: list[bool], source) -> "PixelScale":
        raw = [x for x, w in zip(images, windowed) if not w]
        if not raw:
            return cls("window")
        if all(x.dtype in (np.uint8, np.bool_) for x in raw):
            return cls("uint8")
        step = max(1, sum(x.size for x in raw) // MAX_SAMPLES)  # percentiles from a strided sample of the values
        values = np.concatenate([x.reshape(-1)[::step].astype(np.float32) for x in raw])
        lo, hi = min(float(x.min()) for x in raw), max(float(x.max()) for x in raw)
        if not np.isfinite([lo, hi]).all():
            raise DataFormatError(f"{source}: the images hold NaN or infinite values")
        if all(x.dtype.kind == "f" for x in raw) and lo >= 0 and hi <= 1:
            return cls("unit")
        a, b = (float(v) for v in np.percentile(values, [0.5, 99.5]))
        if b <= a:
            a, b = lo, max(hi, lo + 1)
        dtypes = sorted({str(x.dtype) for x in raw})
        (log.warning if "float" in " ".join(dtypes) else log.info)(
            "%s: %s pixel values in [%g, %g] (not uint8, not floats in [0, 1]): scaled by the dataset's intensity "
            "range [%g, %g] (0.5th-99.5th percentile of the training values) -> [0, 1], clipped", source,
            "/".join(dtypes), lo, hi, a, b)
        return cls("range", a, b)

    def apply(self, x: np.ndarray, windowed: bool = False, source="") -> np.ndarray:
        """uint8 stays uint8 (mode uint8); everything else becomes float32 in [0, 1]."""
        if windowed:
            return x.astype(np.float32)
        if self.mode == "range":
            return scale_intensity_range(x, self.lo, self.hi)
        if x.dtype in (np.uint8, np.bool_):
            return x.astype(np.uint8) * 255 if x.dtype == np.bool_ else x
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if x.dtype.kind != "f" or lo < 0 or hi > 1 or not np.isfinite([lo, hi]).all():
            raise DataFormatError(f"{source}: {x.dtype} pixel values in [{lo:g}, {hi:g}], but the training images "
                                  f"were {self.describe()}; give every split the same kind of pixels")
        return x.astype(np.float32)

    def describe(self) -> str:
        return {"uint8": "uint8 / 255", "unit": "float in [0, 1], as stored",
                "window": "DICOM window (WindowCenter/Width) -> [0, 1]",
                "range": f"intensity range [{self.lo:g}, {self.hi:g}] -> [0, 1] (clipped)"}[self.mode]


@dataclass
class Chain:
    """read -> one channel count -> one size -> PixelScale; fit on the training examples, applied to every split."""

    channels: int
    size: tuple[int, int] | None
    scale: PixelScale
    steps: str

    @classmethod
    def fit(cls, ex: Examples, size: int | None, source) -> "Chain":
        chans = Counter(1 if x.ndim == 2 else x.shape[-1] for x in ex.images)
        channels = 3 if any(c >= 3 for c in chans) else 1
        shapes = Counter(x.shape[:2] for x in ex.images)
        target = (size, size) if size else (shapes.most_common(1)[0][0] if len(shapes) > 1 else None)
        steps = [f"read {len(ex.files)} file(s)", f"{'RGB' if channels == 3 else 'grey'}"
                 + (f" (converted from {dict(chans)} channels)" if len(chans) > 1 else "")]
        if target is not None and set(shapes) != {target}:
            seen = ", ".join(f"{h}x{w}" for (h, w), _ in shapes.most_common(3))
            steps.append(f"resize to {target[0]}x{target[1]} ({len(shapes)} size(s) seen: {seen})")
        chain = cls(channels, target, PixelScale("uint8"), "")
        chain.scale = PixelScale.fit([chain._resize(cls._mode(x, channels)) for x in ex.images], ex.windowed, source)
        chain.steps = " -> ".join([*steps, chain.scale.describe()])
        return chain

    @staticmethod
    def _mode(x: np.ndarray, channels: int) -> np.ndarray:
        if x.ndim == 3 and x.shape[-1] not in (1, 3):
            x = x[..., :3] if x.shape[-1] > 3 else x[..., :1]  # RGBA -> RGB, 2-channel -> first
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if channels == 3 and x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=-1)  # (H, W, 3)
        return x

    def _resize(self, x: np.ndarray) -> np.ndarray:
        if self.size is None or x.shape[:2] == self.size:
            return x
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        t = t[None, None] if x.ndim == 2 else t.permute(2, 0, 1)[None]  # (1, C, H, W)
        t = F.interpolate(t, size=self.size, mode="bilinear", antialias=True, align_corners=False)[0]
        out = (t[0] if x.ndim == 2 else t.permute(1, 2, 0)).numpy()  # (H', W'[, C])
        return out.astype(np.float32) if x.dtype.kind == "f" else np.clip(np.rint(out), *_limits(x.dtype)).astype(x.dtype)

    def apply(self, ex: Examples, source) -> np.ndarray:
        """(N, H, W) or (N, H, W, 3): uint8, or float32 in [0, 1]."""
        out = [self.scale.apply(self._resize(self._mode(x, self.channels)), w, source)
               for x, w in zip(ex.images, ex.windowed)]
        if any(o.dtype != np.uint8 for o in out):
            out = [o.astype(np.float32) / 255 if o.dtype == np.uint8 else o for o in out]
        if len({o.shape for o in out}) > 1:
            raise DataFormatError(f"{source}: image sizes differ ({sorted({o.shape for o in out})[:3]}); "
                                  "the recipe's image size resizes them")
        return np.stack(out)


def _limits(dtype) -> tuple[float, float]:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    return (info.min, info.max) if info else (-np.inf, np.inf)
