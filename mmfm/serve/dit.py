"""DiT behind /v1/images/generations: a class name (class-conditional folders), a text prompt (folders trained
with a CLIP text encoder on the built-in classes) or free text (caption-conditioned folders, dit_train.py --data
PAIRS text_encoder=CLIP) -> n PNGs, sampled with classifier-free guidance (one request at a time). The frozen CLIP
text tower is loaded once with the model and runs on its device; a latent model's samples are decoded through the
VAE saved in its folder (<folder>/vae)."""
from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import torch

from ..diffusion import load_scheduler_config, make_sampler, sample
from ..diffusion.saved import conditioning, decoded_size, latent_decoder, prompt_problem, read_meta, text_conditioner
from .errors import APIError
from .images import to_png_base64
from .schemas import ImageRequest

SAMPLER = "dpm++"
TEXT = ("text", "captions")  # conditionings sampled from a prompt through the CLIP text tower


class DiTService:
    family = "dit"

    def __init__(self, model_id: str, model, folder: Path):
        cfg, meta = model.config, read_meta(folder)
        self.id, self.model, self.cfg = model_id, model.eval(), cfg
        device = next(model.parameters()).device
        self.decode = latent_decoder(folder, meta, device)
        if self.decode is None and cfg.in_channels not in (1, 3):
            raise ValueError(f"{model_id}: a DiT with {cfg.in_channels} (latent) channels needs the VAE that decodes "
                             f"them: {folder}/diffusion.json has no latent_scale (recipes/dit_train.py vae= writes it)")
        self.class_names: list[str] = list(meta.get("class_names") or [])
        if cfg.num_classes and len(self.class_names) != cfg.num_classes:
            raise ValueError(f"{model_id}: {Path(folder) / 'diffusion.json'} must list the model's {cfg.num_classes} "
                             "class_names (recipes/dit_train.py writes it)")
        self.scheduler_config = load_scheduler_config(folder)
        self.conditioning = conditioning(meta, cfg)
        self.prompts = text_conditioner(meta, device) if self.conditioning in TEXT else None  # once per process
        self.image_size = cfg.input_size if self.decode is None else decoded_size(meta)
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"family": "dit", "conditioning": self.conditioning, "classes": self.class_names,
                "image_size": self.image_size, "endpoints": ["/v1/images/generations"]}

    def close(self) -> None:
        pass

    def _condition(self, prompt: str, n: int) -> dict:
        if self.conditioning in TEXT:
            problem = prompt_problem(self.prompts, prompt)
            if problem:
                code, message = problem
                raise APIError(400, f"'prompt' {message}", "prompt",
                               code if code == "context_length_exceeded" else None)
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
            images = self.decode(images) if self.decode else images
        return [to_png_base64(x.cpu()) for x in images]

    async def generate(self, req: ImageRequest) -> dict:
        cond = self._condition(req.prompt, req.n)
        seed = req.seed % 2**63 if req.seed is not None else random.randrange(2**31)
        images = await asyncio.to_thread(self._sample, cond, req, seed)
        return {"created": int(time.time()), "model": self.id, "seed": seed,
                "data": [{"b64_json": b} for b in images]}
