"""Datasets of the alignment stages, over rows the data layer has already encoded: packed pretraining windows,
SFT chats (ids, loss_mask) and preference pairs, with their collates."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from .chat import collate_chat
from .formats import Example, encode_example

log = logging.getLogger(__name__)


class Windows(Dataset):
    """Pretraining: {"ids" (block+1,), "loss_mask" all ones}; reuses the chat collate."""

    def __init__(self, tok, docs: list[str], block: int):
        stream = []
        for d in docs:
            stream += tok.encode(d) + [tok.eos_id]
        n = (len(stream) - 1) // block
        self.rows = torch.tensor(stream[: n * block + 1], dtype=torch.long).unfold(0, block + 1, block)  # (n, block+1)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i].tolist()
        return row, [1] * len(row)


def _warn_truncated(rows, max_len: int, what: str):
    n = sum(len(r[0]) >= max_len for r in rows)
    if n:
        log.warning("%d %s reach the model's block size %d and were cut to it", n, what, max_len)


class Chats(Dataset):
    """SFT: one (ids, loss_mask) per example; the mask is 1 on assistant turns only."""

    def __init__(self, tok, examples: list[Example], max_len: int | None = None):
        self.rows = [encode_example(tok, e.turns, e.where, max_len) for e in examples]
        if max_len:
            _warn_truncated(self.rows, max_len, "chats")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def chat_collate(pad: int):
    return lambda batch: collate_chat(batch, pad)


class Pairs(Dataset):
    """Preference pairs -> (chosen (ids, loss_mask), rejected (ids, loss_mask), index)."""

    def __init__(self, tok, examples: list[Example], max_len: int | None = None):
        self.rows = [(encode_example(tok, e.turns + e.chosen, e.where, max_len),
                      encode_example(tok, e.turns + e.rejected, e.where, max_len)) for e in examples]
        if max_len:
            _warn_truncated([r for pair in self.rows for r in pair], max_len, "responses")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return (*self.rows[i], i)


def pair_collate(pad: int):
    """-> {"chosen": chat batch, "rejected": chat batch, "index" (B,)}."""
    def collate(batch):
        return {"chosen": collate_chat([b[0] for b in batch], pad), "rejected": collate_chat([b[1] for b in batch], pad),
                "index": torch.tensor([b[2] for b in batch])}
    return collate
