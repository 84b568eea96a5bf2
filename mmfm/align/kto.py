"""KTO (Ethayarajh et al. 2024) on unpaired responses: data (TRL's unpaired preference shape, or preference pairs
split into a desirable and an undesirable response, as TRL's `unpair_preference_dataset`), the mismatched
prompt/response rows of its KL reference point, and the thin LightningModule.

Unpaired JSONL: {"prompt": ..., "completion": ..., "label": true|false}, prompt and completion plain strings or
messages (as TRL's KTOTrainer reads them). Each response also gets a fixed "KL row": its prompt followed by the
response of another record with a different prompt, as TRL builds its KL dataset, so that the reference's
log-probs of both rows are computed once before training (and cached, mmfm.align.refcache); each step estimates
the reference point z0 = mean(log pi - log ref) over the batch's KL rows (clamped at 0, no gradient).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.data import Dataset

from ..data.formats import DataFormatError, Format, read_jsonl, require_path, unknown_format
from ..losses.preference import kto_loss, kto_reference_point, sequence_logprobs
from ..train.strategies import ShardedTask
from .chat import Turn, collate_chat
from .formats import _line_numbers, _require, encode_example, read_preferences, to_turns
from .tasks import OptimMixin

log = logging.getLogger(__name__)
UNPAIRED_FORMATS = (
    Format("unpaired preference", "a .jsonl file whose records have 'prompt', 'completion' (strings or lists of "
           "messages) and 'label' (true: desirable, false: undesirable), TRL's KTO shape",
           '{"prompt": "What is 2+3?", "completion": "5", "label": true}\n'
           '{"prompt": "What is 2+3?", "completion": "6", "label": false}'),
)


@dataclass
class Response:
    where: str
    turns: list[Turn]  # the prompt
    completion: list[Turn]
    desirable: bool
    extra: dict = field(default_factory=dict)  # the record's other columns

    # as the half of a pair it is (mmfm.align.formats.train_val splits and deduplicates on these)
    @property
    def chosen(self) -> list[Turn]:
        return self.completion if self.desirable else []

    @property
    def rejected(self) -> list[Turn]:
        return [] if self.desirable else self.completion


def read_unpaired(path) -> list[Response]:
    """Unpaired preference records -> responses with their label."""
    path = require_path(path)
    records, lines = read_jsonl(path), _line_numbers(path)
    if not {"prompt", "completion", "label"} <= set(records[0]):
        raise unknown_format(path, "unpaired preference", UNPAIRED_FORMATS,
                             f"line {lines[0]} has fields {sorted(records[0])}")
    out = []
    for rec, line in zip(records, lines):
        where = f"{path}:{line}"
        _require(rec, ["prompt", "completion", "label"], where, "unpaired preference")
        if not isinstance(rec["label"], bool):
            raise DataFormatError(f"{where}: 'label' must be true or false, got {rec['label']!r}")
        out.append(Response(where, to_turns(rec["prompt"], where, "prompt", "user", train=False),
                            to_turns(rec["completion"], where, "completion", "assistant", train=True), rec["label"],
                            {k: v for k, v in rec.items() if k not in ("prompt", "completion", "label")}))
    n_good = sum(r.desirable for r in out)
    log.info("%s: unpaired preference data, %d responses (%d desirable, %d undesirable)", path, len(out), n_good,
             len(out) - n_good)
    return out


def unpair(pairs) -> list[Response]:
    """Preference pairs (mmfm.align.formats.read_preferences) -> a desirable (chosen) and an undesirable
    (rejected) response per pair."""
    return [Response(e.where, e.turns, resp, good, e.extra) for e in pairs
            for resp, good in ((e.chosen, True), (e.rejected, False))]


def read_kto(path) -> list[Response]:
    """KTO's data: unpaired records (with "label") as they are, preference pairs unpaired."""
    first = read_jsonl(require_path(path))[0]
    return read_unpaired(path) if "label" in first else unpair(read_preferences(path))


def kl_partners(responses: list[Response], seed: int) -> list[int]:
    """For each response the index of another whose prompt differs (next in a seeded shuffle; the next different
    one when neighbours share a prompt); itself only when every prompt is the same."""
    order = list(range(len(responses)))
    random.Random(seed).shuffle(order)
    partner = [0] * len(order)
    for k, i in enumerate(order):
        j = next((order[(k + s) % len(order)] for s in range(1, len(order))
                  if responses[order[(k + s) % len(order)]].turns != responses[i].turns), i)
        partner[i] = j
    return partner


class Unpaired(Dataset):
    """-> (response (ids, loss_mask), KL row (ids, loss_mask), desirable, index); `rows` holds both encodings."""

    def __init__(self, tok, responses: list[Response], max_len: int | None = None, seed: int = 0):
        partner = kl_partners(responses, seed)
        self.labels = [r.desirable for r in responses]
        self.rows = [(encode_example(tok, r.turns + r.completion, r.where, max_len),
                      encode_example(tok, r.turns + responses[j].completion, r.where, max_len))
                     for r, j in zip(responses, partner)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return (*self.rows[i], self.labels[i], i)


def unpaired_collate(pad: int):
    """-> {"response": chat batch, "kl": chat batch, "desirable" (B,) bool, "index" (B,)}."""
    def collate(batch):
        return {"response": collate_chat([b[0] for b in batch], pad), "kl": collate_chat([b[1] for b in batch], pad),
                "desirable": torch.tensor([b[2] for b in batch]), "index": torch.tensor([b[3] for b in batch])}
    return collate


class KTOTask(OptimMixin, ShardedTask, L.LightningModule):
    """mmfm.losses.kto_loss on unpaired responses; `ref_logps` (N, 2) holds log ref(response) and log ref(KL row)
    per index. The KL rows' policy log-probs are taken without gradient (z0 is detached)."""

    def __init__(self, policy, ref_logps: torch.Tensor, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0,
                 lr=2e-5, weight_decay=0.0, warmup=10, max_steps=200):
        super().__init__()
        self.policy, self.beta, self.weights = policy, beta, (desirable_weight, undesirable_weight)
        self.register_buffer("ref_logps", ref_logps, persistent=False)
        self.hparams_ = dict(lr=lr, weight_decay=weight_decay, warmup=warmup, max_steps=max_steps)

    def training_step(self, batch, _):
        r, kl, good = batch["response"], batch["kl"], batch["desirable"]
        logps = sequence_logprobs(self.policy(r["ids"]), r["ids"], r["loss_mask"])  # (B,)
        with torch.no_grad():
            kl_logps = sequence_logprobs(self.policy(kl["ids"]), kl["ids"], kl["loss_mask"])
        ref = self.ref_logps[batch["index"]]  # (B, 2)
        z0 = kto_reference_point(kl_logps, ref[:, 1])
        loss = kto_loss(logps, ref[:, 0], good, z0, self.beta, *self.weights).mean()
        reward = (logps - ref[:, 0]).detach()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/kl", z0)
        if good.any():
            self.log("train/reward_desirable", reward[good].mean())
        if (~good).any():
            self.log("train/reward_undesirable", reward[~good].mean())
        return loss
