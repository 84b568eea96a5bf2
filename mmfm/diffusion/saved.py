"""A DiT folder saved by recipes/dit_train.py, read for sampling (recipes/dit_sample.py, mmfm serve): what it is
conditioned on, its text conditioner, and the decoder of a latent model's samples.

    meta = read_meta(folder)
    kind = conditioning(meta, model.config)          # "captions", "text", "class" or "none"
    text = text_conditioner(meta, device)            # once per process: the frozen CLIP text tower on `device`
    problem = prompt_problem(text, "a red heart")    # None, or (code, why the prompt cannot be used)
    cond = text.encode(["a red heart"])              # {"text": (1, E)[, "context", "context_mask"]}
    decode = latent_decoder(folder, meta, device)    # None for a pixel model

Conditioning: "captions" (diffusion.json's "conditioning", dit_train.py --data PAIRS text_encoder=CLIP: free text
through the CLIP it was trained with), "text" (text_encoder= on the built-in classes: any text, the class
prompts by default), "class" (class labels) or "none".
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_meta(folder) -> dict:
    """The folder's diffusion.json ({} when there is none)."""
    path = Path(folder) / "diffusion.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def conditioning(meta: dict, cfg) -> str:
    """What a saved DiT is sampled from: "captions", "text", "class" or "none"."""
    if meta.get("conditioning") == "captions":
        return "captions"
    if meta.get("text_encoder"):
        return "text"
    return "class" if cfg.num_classes else "none"


def text_encoder_folder(meta: dict) -> Path:
    """The saved CLIP folder the DiT was conditioned on (as recorded, relative to where it was trained)."""
    path = Path(meta["text_encoder"])
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the DiT was trained with text_encoder={meta['text_encoder']}, which is not a "
                                f"saved CLIP folder from here (run from the directory it was trained in)")
    return path


def text_conditioner(meta: dict, device="cpu"):
    """The text conditioner of a "captions" or "text" folder, its frozen CLIP on `device`: a TextConditioner
    (free text only) for caption models, a PromptConditioner (free text and the class prompts) for class-prompt
    models. Build it once per process: loading the CLIP is the slow part, encoding a prompt is one forward."""
    from .text import PromptConditioner, TextConditioner

    folder, tokens = text_encoder_folder(meta), bool(meta.get("text_tokens"))
    if meta.get("conditioning") == "captions":
        cond = TextConditioner(TextConditioner.load_clip(str(folder)), tokens)
    else:
        cond = PromptConditioner.from_folder(str(folder), meta["class_names"], tokens)
    log.info("text conditioning through the frozen CLIP at %s (on %s)", folder, device)
    return cond.to(device)


def prompt_problem(conditioner, prompt: str) -> tuple[str, str] | None:
    """(code, message) saying why `prompt` cannot condition the model, or None: code "empty", "unencodable" or
    "context_length_exceeded" (longer than the CLIP's context, which would otherwise be cut silently)."""
    if not prompt.strip():
        return "empty", "is empty; this DiT is text-conditioned: describe the image"
    tok, limit = conditioner.clip.tokenizer, conditioner.clip.config.context_length
    try:
        n = len(tok.encode(prompt)) + (tok.bos_id is not None) + 1  # with the start / end tokens it is encoded with
    except (ValueError, TypeError) as e:
        return "unencodable", f"cannot be encoded by the text encoder's tokenizer: {e}"
    if n > limit:
        return ("context_length_exceeded",
                f"is {n} tokens, over the text encoder's context length of {limit}; shorten it")
    return None


def decoded_size(meta: dict) -> int:
    """The size a latent model's decoded samples are cropped to (older folders: the built-in 28 px data, the only
    data vae= took then)."""
    return meta.get("image_size") or 28


def latent_decoder(folder, meta: dict, device):
    """The decoder of a latent model's samples (its VAE, the saved latent scale, cropped to the images' size),
    or None for a pixel model."""
    if meta.get("latent_scale") is None:
        return None
    from .latent import LatentCodec

    vae = Path(folder) / "vae"
    if not (vae / "config.json").is_file():  # folders from before vae/ was saved: the VAE it was trained with
        vae = Path(meta["train"]["vae"])
    size = decoded_size(meta)
    codec = LatentCodec.from_folder(vae, image_size=size, scale=meta["latent_scale"]).to(device)
    log.info("latent model: samples decoded by %s and cropped to %d px", vae, size)
    return codec.decode
