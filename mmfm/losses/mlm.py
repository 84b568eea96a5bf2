"""Pretraining objectives for encoders and encoder-decoders, outside the models:

    inputs, labels = mlm_mask(ids, mask_id=bert.config.mask_id, vocab_size=V)   # BERT: 15%, 80/10/10
    loss = lm_loss(bert(inputs, attention_mask), labels)                         # labels -100 off the chosen
    inp, tgt = span_corrupt(tokens, sentinel_start=V - 1, eos_id=1)               # T5: sentinels, mean span 3
    tokens == span_restore(inp, tgt, sentinel_start=V - 1, eos_id=1)
"""
from __future__ import annotations

import torch


def mlm_mask(ids: torch.Tensor, mask_id: int, vocab_size: int, p: float = 0.15, keep: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of token ids (B, T): each position with probability `p` is chosen (never where `keep` is
    True, e.g. padding or [CLS]); of the chosen, 80% become `mask_id`, 10% a uniformly random token and 10%
    stay. Returns (inputs, labels): labels hold the original id at chosen positions and -100 elsewhere."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = u < p
    if keep is not None:
        chosen &= ~keep.bool()
    labels = ids.masked_fill(~chosen, -100)
    how = torch.rand(ids.shape, generator=generator, device=ids.device)  # < .8 mask, < .9 random, else kept
    rand = torch.randint(0, vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), rand, inputs)
    return inputs, labels


def _segments(n: int, k: int, generator) -> list[int]:
    """n items split into k non-empty runs at random (k - 1 distinct cut points)."""
    cuts = sorted((torch.randperm(n - 1, generator=generator)[:k - 1] + 1).tolist())
    return [b - a for a, b in zip([0] + cuts, cuts + [n])]


def span_corrupt(tokens: list[int], sentinel_start: int, eos_id: int, noise_density: float = 0.15,
                 mean_span: float = 3.0, generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
    """T5's span corruption of one sequence: about `noise_density` of the tokens, in spans of mean length
    `mean_span`, are cut out. The input keeps the rest with sentinel i (= sentinel_start - i) in place of span i;
    the target is sentinel 0, span 0, sentinel 1, span 1, ..., eos. Needs at least 2 tokens."""
    n = len(tokens)
    if n < 2:
        raise ValueError(f"span_corrupt needs at least 2 tokens, got {n}")
    n_noise = min(max(int(round(n * noise_density)), 1), n - 1)
    n_spans = max(min(int(round(n_noise / mean_span)), n_noise, n - n_noise), 1)
    noise, keep = _segments(n_noise, n_spans, generator), _segments(n - n_noise, n_spans, generator)
    inputs, targets, i = [], [], 0
    for s, (k, z) in enumerate(zip(keep, noise)):  # keep-run then noise-span, as T5 (inputs start with text)
        inputs += tokens[i:i + k] + [sentinel_start - s]
        targets += [sentinel_start - s] + tokens[i + k:i + k + z]
        i += k + z
    return inputs, targets + [eos_id]


def span_restore(inputs: list[int], targets: list[int], sentinel_start: int, eos_id: int) -> list[int]:
    """The original sequence from span_corrupt's (inputs, targets): each sentinel in the input replaced by the
    target's span that follows the same sentinel."""
    spans, cur = {}, None  # sentinels come in order S, S-1, ...: the next one is the only id to look for
    for t in targets:
        if t == eos_id:
            break
        if t == sentinel_start - len(spans):
            cur = spans.setdefault(t, [])
        elif cur is None:
            raise ValueError("targets must start with a sentinel")
        else:
            cur.append(t)
    return [x for t in inputs for x in spans.get(t, [t])]
