"""CLIP behind /v1/embeddings (texts and images) and /v1/classify (zero-shot: an image, candidate labels ->
ranked labels with probabilities). Texts and images from concurrent requests go through one forward per batch."""
from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict

import numpy as np
import torch

from .batcher import Batcher
from .errors import APIError
from .images import decode_image, is_data_url
from .schemas import ClassifyRequest, EmbeddingRequest, ImageInput

LABEL_CACHE = 4096  # text embeddings of recent labels, reused across classify requests


class CLIPService:
    family = "clip"

    def __init__(self, model_id: str, model, max_batch: int = 64):
        if model.tokenizer is None:
            raise ValueError(f"{model_id}: a CLIP folder needs its tokenizer/ to be served")
        self.id, self.model, self.tok, self.cfg = model_id, model.eval(), model.tokenizer, model.config
        self.batcher = Batcher({"text": self._encode_texts, "image": self._encode_images}, max_batch, f"clip-{model_id}")
        self._labels: OrderedDict[str, torch.Tensor] = OrderedDict()

    def describe(self) -> dict:
        return {"family": "clip", "embedding_dim": self.cfg.embed_dim, "image_size": self.cfg.img_size,
                "context_length": self.cfg.context_length, "endpoints": ["/v1/embeddings", "/v1/classify"]}

    def close(self) -> None:
        self.batcher.stop()

    # --- batched forwards (engine thread) -------------------------------------------------------------------
    def _encode_texts(self, rows: list[list[int]]) -> list[torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tok.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return list(self.model.encode_text(ids).float())  # (B, E) -> rows; exact: causal, pooled at end-of-text

    def _encode_images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.model.encode_image(torch.stack(images)).float())  # uint8 (B, C, H, W) -> (B, E)

    # --- requests -> items ------------------------------------------------------------------------------------
    def _text_ids(self, text: str, param: str) -> list[int]:
        try:
            ids, mask = self.tok.encode_batch([text], max_len=self.cfg.context_length)
        except (ValueError, TypeError) as e:
            raise APIError(400, f"'{param}' cannot be encoded by this model's tokenizer: {e}", param) from None
        return ids[0, :int(mask[0].sum())].tolist()

    def _image(self, data: str, param: str) -> torch.Tensor:
        return decode_image(data, self.cfg.in_chans, self.cfg.img_size, param)

    def _items(self, inp) -> list[tuple[str, object]]:
        many = isinstance(inp, list)
        items = inp if many else [inp]
        if not items:
            raise APIError(400, "'input' is an empty list", "input")
        out = []
        for i, x in enumerate(items):
            param = f"input[{i}]" if many else "input"
            if isinstance(x, ImageInput):
                out.append(("image", self._image(x.image, param)))
            elif is_data_url(x):
                out.append(("image", self._image(x, param)))
            else:
                out.append(("text", self._text_ids(x, param)))
        return out

    async def _embed(self, items) -> list[torch.Tensor]:
        return list(await asyncio.gather(*(self.batcher(kind, item) for kind, item in items)))

    # --- endpoints ------------------------------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest) -> dict:
        if req.dimensions is not None and req.dimensions != self.cfg.embed_dim:
            raise APIError(400, f"'dimensions' must be this model's embedding width {self.cfg.embed_dim} (or left "
                                f"out), got {req.dimensions}", "dimensions")
        items = self._items(req.input)
        vectors = await self._embed(items)
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
                for i, v in enumerate(vectors)]
        tokens = sum(len(item) for kind, item in items if kind == "text")
        return {"object": "list", "data": data, "model": self.id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def classify(self, req: ClassifyRequest) -> dict:
        if "{}" not in req.template:
            raise APIError(400, "'template' must contain {} where each label goes, e.g. 'a photo of a {}'",
                           "template")
        image = self._image(req.image, "image")
        texts = [req.template.replace("{}", label) for label in req.labels]
        missing = [t for t in dict.fromkeys(texts) if t not in self._labels]
        items = [("image", image)] + [("text", self._text_ids(t, "labels")) for t in missing]
        vectors = await self._embed(items)
        for t, v in zip(missing, vectors[1:]):
            self._labels[t] = v
        weights = torch.stack([self._labels[t] for t in texts])  # (L, E)
        for t in texts:
            self._labels.move_to_end(t)
        while len(self._labels) > LABEL_CACHE:
            self._labels.popitem(last=False)
        scores = vectors[0] @ weights.T  # (L,) cosine similarities
        probs = (scores * self.model.logit_scale.exp().float()).softmax(-1)
        ranked = sorted(zip(req.labels, probs.tolist(), scores.tolist()), key=lambda r: -r[1])
        return {"object": "classification", "model": self.id,
                "labels": [{"label": lab, "probability": p, "score": s} for lab, p, s in ranked]}


def _encode_vector(v: torch.Tensor, fmt: str):
    if fmt == "base64":  # little-endian float32, as OpenAI's (the openai client asks for it by default)
        return base64.b64encode(v.numpy().astype("<f4").tobytes()).decode()
    return [float(x) for x in np.asarray(v)]
