"""Evaluating a captioning VLM: greedy captions with the KV cache, BLEU-4 and ROUGE-L (torchmetrics) against
every reference caption of the image, and a CLIP score with mmfm's own trained CLIP for the generated and the
real captions, plus a PNG grid of test images with both captions.

CLIP score (Hessel et al. 2021, as torchmetrics' CLIPScore): 100 * max(cos(image, caption), 0), averaged over
images, here with an mmfm CLIP folder (torchmetrics' class only loads Hugging Face CLIPs). The real captions'
score is the same average over each test image's own caption (the one its shard sample carries).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.captions import PROMPT

log = logging.getLogger(__name__)


@torch.no_grad()
def generate_captions(model, images: torch.Tensor, batch_size: int = 256, max_len: int = 48,
                      prompt: str = PROMPT) -> list[str]:
    """Greedy captions, one per image (uint8 (N, C, H, W)), after `prompt + " "`; at most `max_len` tokens, and
    no more than the model's text room leaves after the prompt."""
    c = model.config
    room = c.block_size - (c.image_tokens if c.fusion == "prefix" else 0) - len(model.tokenizer.encode(prompt + " "))
    max_len = min(max_len, room)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        gen = model.generate(chunk, [prompt + " "] * len(chunk), max_len, temperature=0)
        out += [t.strip() for t in gen.texts()]
    return out


def load_clip(path: str | Path):
    """An mmfm CLIP folder for scoring; a missing one is refused with the command that writes it."""
    import mmfm

    folder = Path(path)
    if not (folder / "config.json").is_file():
        found = sorted(str(p.parent) for p in Path("runs").glob("clip*/model/config.json"))
        raise FileNotFoundError(f"clip={path}: no CLIP model folder there (config.json). Make one with "
                                f"`python recipes/clip_pretrain.py --out {folder.parent}`"
                                + (f", or pass one of {found}" if found else ""))
    model = mmfm.build_model(str(folder)).eval()
    if model.config.family != "clip":
        raise ValueError(f"clip={path}: a {model.config.family} folder, not a CLIP")
    return model


@torch.no_grad()
def clip_scores(clip, images: torch.Tensor, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    """(N,) 100 * max(cos, 0) of each uint8 image (N, C, H, W) with its text, after the CLIP's own preprocessing."""
    from ..data.webdata import image_transform
    from ..eval.zeroshot import encode_images, encode_texts

    transform = image_transform(clip.config, train=False)
    pixels = torch.stack([transform(Image.fromarray(im.permute(1, 2, 0).squeeze(-1).numpy()))
                          for im in images])  # (N, C, H, W) normalised
    img = encode_images(clip, pixels, batch_size)
    txt = encode_texts(clip, clip.tokenizer, texts, batch_size).to(img.device)
    return 100 * F.cosine_similarity(img, txt, dim=-1).clamp(min=0).cpu()


def caption_metrics(preds: list[str], references: list[list[str]]) -> dict:
    """BLEU-4 (corpus) and ROUGE-L F1 (best reference per caption, averaged) by torchmetrics."""
    from torchmetrics.text import BLEUScore, ROUGEScore

    bleu = BLEUScore(n_gram=4)(preds, references)
    rouge = ROUGEScore(rouge_keys=("rougeL",), accumulate="best")(preds, references)["rougeL_fmeasure"]
    return {"bleu4": float(bleu), "rouge_l": float(rouge)}


def evaluate_captions(model, dataset, clip=None, batch_size: int = 256, keep: int = 16,
                      blind: bool = False, split: str = "test") -> tuple[dict, list]:
    """({"<split>/bleu4", "<split>/rouge_l", "<split>/caption_in_references" (share of captions equal to one of
    the image's), and with a CLIP "<split>/clip_score", "<split>/clip_score_real", "<split>/clip_score_ratio"},
    `keep` evenly spaced (example, generated caption)). blind: the model captions blank images (scored against
    the real ones)."""
    was_training = model.training
    examples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([ex.image for ex in examples])  # (N, 1, H, W) uint8
    preds = generate_captions(model, torch.zeros_like(images) if blind else images, batch_size)
    model.train(was_training)
    metrics = {f"{split}/{k}": v for k, v in caption_metrics(preds, [ex.captions for ex in examples]).items()}
    if clip is not None:
        gen, real = clip_scores(clip, images, preds).mean(), clip_scores(clip, images, [ex.answer for ex in examples]).mean()
        metrics.update({f"{split}/clip_score": float(gen), f"{split}/clip_score_real": float(real),
                        f"{split}/clip_score_ratio": float(gen / real) if real > 0 else float("nan")})
    exact = sum(p in ex.captions for p, ex in zip(preds, examples)) / len(examples)
    metrics[f"{split}/caption_in_references"] = exact
    spread = sorted({round(i * (len(examples) - 1) / max(keep - 1, 1)) for i in range(keep)}) if keep else []
    return metrics, [(examples[i], preds[i]) for i in spread]  # evenly spaced: both sources


def caption_grid(shown: list, path: str | Path, cols: int = 4) -> Path:
    """A PNG of test images, each titled with its real caption and the generated one."""
    from .vlm import titled_grid

    return titled_grid([(ex.image, f"real: {ex.answer}\nmodel: {pred}", "green" if pred in ex.captions else "black")
                        for ex, pred in shown], path, cols, size=(3.4, 3.4))
