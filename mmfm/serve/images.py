"""Images in and out of requests: base64 / data URLs -> the model's uint8 pixels, and pixels -> base64 PNG."""
from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import APIError

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
MAX_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded


def is_data_url(s: str) -> bool:
    return bool(_DATA_URL.match(s))


def decode_image(data: str, channels: int, size: int, param: str = "image") -> torch.Tensor:
    """A base64 string or data URL -> uint8 pixels (channels, size, size): the shorter side resized to `size`,
    then the centre crop. Anything that is not a decodable image is a 400 naming `param`."""
    raw = _DATA_URL.sub("", data.strip(), count=1)
    try:
        blob = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"'{param}' is not valid base64 (send the image file's bytes base64-encoded, or a "
                            "data:image/...;base64, URL)", param) from None
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise APIError(400, f"'{param}' is {im.width}x{im.height} pixels, more than {MAX_PIXELS:,}", param)
            im = im.convert("L" if channels == 1 else "RGB")
            scale = size / min(im.width, im.height)
            w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            pixels = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise APIError(400, f"'{param}' could not be decoded as an image (PNG, JPEG, GIF, WebP, BMP ...)",
                       param) from None
    t = torch.from_numpy(pixels.copy())
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if channels not in (1, 3):
        t = t[:1].expand(channels, -1, -1).contiguous()
    return t


def to_png_base64(image: torch.Tensor) -> str:
    """(C, H, W) floats in [-1, 1], C = 1 or 3 -> base64 PNG."""
    x = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()  # (H, W) or (H, W, C)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
