"""Export a class-conditional latent DiT as a diffusers `DiTPipeline` folder (transformer + scheduler + VAE).

    export_dit_pipeline(dit, sampler, vae, latent_scale, class_names, "runs/pipe")
    pipe = diffusers.DiTPipeline.from_pretrained("runs/pipe"); pipe(pipe.get_label_ids(["three", "cat"])).images

diffusers' pipeline draws the null label as the fixed id 1000 (ImageNet's) for classifier-free guidance, so the
exported transformer's label table is padded to 1,000 classes: rows 0..N-1 are the model's classes and every
row from N to 1000 holds its null embedding (the function is unchanged for the real labels and the null).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..models.dit import DiT
from .diffusers_dit import to_diffusers_dit

log = logging.getLogger(__name__)

PIPELINE_NULL = 1000  # diffusers' DiTPipeline: class_null = torch.tensor([1000] * batch_size)


def pad_classes(model: DiT, num_classes: int = PIPELINE_NULL) -> DiT:
    """A copy of `model` with `num_classes` classes whose extra rows (and the new null, id num_classes) all
    hold the original null embedding."""
    c = model.config
    if not 0 < c.num_classes <= num_classes:
        raise ValueError(f"num_classes={c.num_classes}: DiTPipeline exports need a class-conditional DiT with at "
                         f"most {num_classes} classes")
    big = DiT(c.replace(num_classes=num_classes))
    sd = dict(model.state_dict())
    table = sd["y_embedder.table.weight"]  # (N + 1, D), row N = null
    sd["y_embedder.table.weight"] = torch.cat([table[:-1], table[-1:].expand(num_classes + 1 - c.num_classes, -1)])
    big.load_state_dict(sd)
    return big.to(table.dtype).eval()


def export_dit_pipeline(model: DiT, scheduler, vae, latent_scale: float, class_names, path: str | Path) -> Path:
    """Write a `DiTPipeline` folder: the transformer (`to_diffusers_dit` of the padded model), `scheduler` (a
    diffusers sampler, e.g. make_sampler("dpm++", config)) and the AutoencoderKL with scaling_factor =
    latent_scale. A `timestep_freq_shift=0` model reloads with diffusers' timestep frequencies (a warning says
    so; train with timestep_freq_shift=1 for an exact export)."""
    from diffusers import DiTPipeline

    if model.config.in_channels != vae.config.latent_channels:
        raise ValueError(f"the DiT takes {model.config.in_channels} channels; the VAE makes {vae.config.latent_channels}")
    vae.register_to_config(scaling_factor=float(latent_scale))
    transformer = to_diffusers_dit(pad_classes(model))
    id2label = {i: str(name) for i, name in enumerate(class_names)}
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=id2label)
    pipe.save_pretrained(path)
    index = Path(path) / "model_index.json"  # DiTPipeline does not save id2label; from_pretrained reads it from
    meta = json.loads(index.read_text())     # here (as in the facebook/DiT-XL-2 folders), so pipe.labels works
    index.write_text(json.dumps({**meta, "id2label": id2label}, indent=2))
    log.info("wrote a DiTPipeline folder %s (%d classes, null id %d)", path, len(id2label), PIPELINE_NULL)
    return Path(path)
