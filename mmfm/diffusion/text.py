"""Text conditioning through a frozen mmfm CLIP text tower.

Captions per class come from the CLIP shards' templates (mmfm.data.imagetext), so the DiT is trained on
the same phrasings as CLIP. Because captions are a finite set, their embeddings are computed once:
the pooled, normalised text embedding (B, embed_dim) goes into adaLN (DiTConfig.text_dim) and,
optionally, the text tokens (B, L, text_width) are cross-attended (DiTConfig.context_dim).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# the prompt each class is sampled from at evaluation (one of the training templates of its source)
EVAL_TEMPLATES = {"digits": "a handwritten digit {name}", "animals": "a silhouette of {a_name}"}


def class_captions(class_names: list[str]) -> tuple[list[list[str]], list[str]]:
    """(training captions per class, one evaluation prompt per class) for the mmfm label sources."""
    from ..data.imagetext import DEFAULT_SOURCES, article

    by_name = {(n, s.name): (s, i) for s in DEFAULT_SOURCES for i, n in enumerate(s.classnames)}
    train, prompts = [], []
    for name in class_names:
        src, i = next(v for (n, _), v in by_name.items() if n == name)
        train.append(src.captions(i))
        prompts.append(EVAL_TEMPLATES[src.name].format(name=name, a_name=article(name)))
    return train, prompts


class TextConditioner:
    """A frozen mmfm CLIP and precomputed text features: `encode`, the feature tables' device moves and row picks,
    and CLIP image embeddings in the tower's own preprocessing. PromptConditioner (class captions) and
    mmfm.diffusion.captions.CaptionConditioner (each image's own captions) fill the tables."""

    def __init__(self, clip, tokens: bool = False):
        self.clip = clip.eval().requires_grad_(False)
        self.tokens = tokens
        self.train_feats: dict = {}
        self.prompt_feats: dict = {}

    @staticmethod
    def load_clip(path: str):
        import mmfm

        clip = mmfm.build_model(path)
        if clip.config.family != "clip" or clip.tokenizer is None:
            raise ValueError(f"{path} must be a saved mmfm CLIP folder with its tokenizer")
        return clip

    @property
    def text_dim(self) -> int:
        return self.clip.config.embed_dim

    @property
    def context_dim(self) -> int:
        return self.clip.config.text_width

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict:
        """{"text": (N, embed_dim) normalised pooled embeddings[, "context": (N, L, width), "context_mask": (N, L)]}."""
        ids, mask = self.clip.tokenizer.encode_batch(list(texts), max_len=self.clip.config.context_length,
                                                     pad_to_max=True)  # (N, L) each
        ids, mask = ids.to(self.device), mask.to(self.device)  # the tower runs where it lives
        out = {"text": self.clip.encode_text(ids)}
        if self.tokens:
            out["context"], out["context_mask"] = self.clip.text.forward_tokens(ids), mask.bool()
        return out

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def to(self, device):
        """Move the CLIP tower and the precomputed features (e.g. to the accelerator a run trained on)."""
        self.clip.to(device)
        self.train_feats = {k: v.to(device) for k, v in self.train_feats.items()}
        self.prompt_feats = {k: v.to(device) for k, v in self.prompt_feats.items()}
        return self

    @staticmethod
    def _pick(feats: dict, index: torch.Tensor) -> dict:
        """Rows `index` of each feature table, on the index's device (the tables move there once, not per step)."""
        for k, v in feats.items():
            if v.device != index.device:
                feats[k] = v.to(index.device)
        return {k: v[index] for k, v in feats.items()}

    def condition(self, index: torch.Tensor) -> dict:
        """The evaluation prompts' features, rows `index`."""
        return self._pick(self.prompt_feats, index)

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1], on any device -> (N, embed_dim) CLIP image embeddings on the tower's device;
        each chunk goes through the tower's preprocessing (its image_mean / image_std)."""
        c = self.clip.config
        device = next(self.clip.parameters()).device
        mean = torch.tensor(c.image_mean, device=device).view(1, -1, 1, 1)  # (1, C, 1, 1)
        std = torch.tensor(c.image_std, device=device).view(1, -1, 1, 1)  # (1, C, 1, 1)
        return torch.cat([self.clip.encode_image(((x.to(device) + 1) / 2 - mean) / std) for x in images.split(500)])


class PromptConditioner(TextConditioner):
    """Precomputed text conditions for a fixed caption set. `batch_condition((images, labels))` picks a random
    training caption of each label; `condition(labels)` uses each class's evaluation prompt."""

    def __init__(self, clip, class_names: list[str], tokens: bool = False):
        super().__init__(clip, tokens)
        self.class_names = class_names
        captions, self.prompts = class_captions(class_names)
        self.n_templates = len(captions[0])
        flat = [c for caps in captions for c in caps]
        self.train_feats = self.encode(flat)  # dict of (C * n_templates, ...)
        self.prompt_feats = self.encode(self.prompts)  # dict of (C, ...)

    @classmethod
    def from_folder(cls, path: str, class_names: list[str], tokens: bool = False) -> "PromptConditioner":
        return cls(cls.load_clip(path), class_names, tokens)

    def batch_condition(self, batch) -> dict:
        labels = batch[1]
        pick = labels * self.n_templates + torch.randint(0, self.n_templates, labels.shape,
                                                         device=labels.device)  # (B,)
        return self._pick(self.train_feats, pick)

    @torch.no_grad()
    def retrieval(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 of prompt retrieval: the fraction of images whose most similar class prompt (CLIP cosine) is
        their own. images in [-1, 1], on any device: each chunk runs on the CLIP tower's device."""
        img = self.image_embeddings(images)  # (N, E)
        sims = img @ F.normalize(self.prompt_feats["text"].to(img.device), dim=-1).T  # (N, C)
        return (sims.argmax(-1) == labels.to(img.device)).float().mean().item()
