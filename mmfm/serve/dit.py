"""DiT behind /v1/images/generations: a class name (class-conditional folders) or a text prompt (folders trained
with a CLIP text encoder) -> n PNGs, sampled with classifier-free guidance (one request at a time)."""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from pathlib import Path

import torch

from ..diffusion import load_scheduler_config, make_sampler, sample
from .errors import APIError
from .images import to_png_base64
from .schemas import ImageRequest

SAMPLER = "dpm++"


class DiTService:
    family = "dit"

    def __init__(self, model_id: str, model, folder: Path):
        cfg = model.config
        if cfg.in_channels not in (1, 3):
            raise ValueError(f"{model_id}: serving samples pixels; a DiT with {cfg.in_channels} (latent) channels "
                             "needs a VAE to decode them, which mmfm does not have")
        meta_file = Path(folder) / "diffusion.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.id, self.model, self.cfg = model_id, model.eval(), cfg
        self.class_names: list[str] = list(meta.get("class_names") or [])
        if cfg.num_classes and len(self.class_names) != cfg.num_classes:
            raise ValueError(f"{model_id}: {meta_file} must list the model's {cfg.num_classes} class_names "
                             "(recipes/dit_train.py writes it)")
        self.scheduler_config = load_scheduler_config(folder)
        self.prompts = None
        if meta.get("text_encoder"):
            from ..diffusion.text import PromptConditioner

            self.prompts = PromptConditioner.from_folder(meta["text_encoder"], self.class_names,
                                                         bool(meta.get("text_tokens")))
        self._lock = threading.Lock()

    @property
    def conditioning(self) -> str:
        return "text" if self.prompts is not None else ("class" if self.cfg.num_classes else "none")

    def describe(self) -> dict:
        return {"family": "dit", "conditioning": self.conditioning, "classes": self.class_names,
                "image_size": self.cfg.input_size, "endpoints": ["/v1/images/generations"]}

    def close(self) -> None:
        pass

    def _condition(self, prompt: str, n: int) -> dict:
        if self.conditioning == "text":
            if not prompt.strip():
                raise APIError(400, "'prompt' is empty; this DiT is text-conditioned: describe the image", "prompt")
            with torch.inference_mode():
                cond = self.prompts.encode([prompt])
            return {k: v.repeat_interleave(n, 0) for k, v in cond.items()}
        if self.conditioning == "none":
            if prompt:
                raise APIError(400, "this DiT is unconditional; leave 'prompt' out", "prompt")
            return {}
        names = {c.lower(): i for i, c in enumerate(self.class_names)}
        if prompt.strip().lower() not in names:
            raise APIError(400, f"'prompt' must be one of this class-conditional DiT's classes: "
                                f"{', '.join(self.class_names)}; got {prompt!r}", "prompt")
        return {"y": torch.full((n,), names[prompt.strip().lower()], dtype=torch.long)}

    def _sample(self, cond: dict, req: ImageRequest, seed: int) -> list[str]:
        c = self.cfg
        shape = (req.n, c.in_channels, c.input_size, c.input_size)
        generator = torch.Generator().manual_seed(seed)
        with self._lock, torch.inference_mode():
            images = sample(self.model, make_sampler(SAMPLER, self.scheduler_config), shape, cond, req.guidance,
                            req.steps, generator=generator, noise=torch.randn(shape, generator=generator))
        return [to_png_base64(x) for x in images]

    async def generate(self, req: ImageRequest) -> dict:
        cond = self._condition(req.prompt, req.n)
        seed = req.seed % 2**63 if req.seed is not None else random.randrange(2**31)
        images = await asyncio.to_thread(self._sample, cond, req, seed)
        return {"created": int(time.time()), "model": self.id, "seed": seed,
                "data": [{"b64_json": b} for b in images]}
