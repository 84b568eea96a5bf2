"""Group rollouts for RL: G completions of each prompt in one batched KV-cache decode that stops computing a
sequence once it has finished.

    out = sample_groups(gpt, prompt_ids, group=8, max_new=64, stop=stop_ids(tok), pad=tok.pad_id, temperature=1.0)
    out.responses      # P*G token lists, prompt by prompt (each ending with its stop token when one was sampled)
    out.logprobs       # (P*G, L) log-probs of the sampled tokens under the distribution sampled from
    out.tokens_per_s   # generated tokens / wall seconds

Each prompt is prefilled once and its cache copied to its G rows. After every step the rows that sampled a stop
token leave the batch (their cache rows are dropped), so late steps run on the few long completions only. A
uniform number per row and step (drawn for all P*G rows, finished or not) picks each token by inverse CDF: the
completions do not depend on which rows are still running, and equal those of the plain loop (`compact=False`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..models.generation import filter_logits, left_pad


@dataclass
class GroupRollout:
    responses: list[list[int]]
    logprobs: torch.Tensor  # (N, L) right-padded with 0 after each response
    seconds: float
    row_steps: int  # sequence-steps computed (sum over decode steps of the rows in the batch)

    @property
    def n_tokens(self) -> int:
        return sum(len(r) for r in self.responses)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / max(self.seconds, 1e-9)


def pick(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """Tokens (B,) and their log-probs (B,) under softmax(filter(logits / T)), by inverse CDF at uniforms u (B,);
    greedy (log-prob 0, a point mass) when temperature is 0."""
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(len(logits), device=logits.device)
    logp = filter_logits(logits.float() / temperature, top_k, top_p).log_softmax(-1)  # (B, V)
    cdf = logp.exp().cumsum(-1)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _prefill(gpt, ids: torch.Tensor, mask: torch.Tensor, caches, padded: bool) -> torch.Tensor:
    """Run the prompts (P, T0) into `caches`; -> logits of the next token (P, V)."""
    if not padded:
        return gpt(ids, caches=caches)[:, -1]
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (P, T0)
    return gpt(ids, key_padding_mask=mask, positions=positions, caches=caches)[:, -1]


def _keep_rows(caches, rows: torch.Tensor) -> None:
    """Select batch rows of every layer's KV cache in place (the decoder reads cache.k / cache.v at each step)."""
    for c in caches:
        c.kv = c.kv[rows]
        c.k, c.v = c.kv[:, 0], c.kv[:, 1]


class _Step:
    """One decode step for the rows still running: the model's fast decoder when it has one, else its forward."""

    def __init__(self, gpt, caches, mask: torch.Tensor, offset: torch.Tensor, padded: bool):
        self.gpt, self.caches, self.mask, self.offset, self.padded = gpt, caches, mask, offset, padded
        self.dec = gpt.decoder(caches) if hasattr(gpt, "decoder") else None

    def keep(self, rows: torch.Tensor) -> None:
        _keep_rows(self.caches, rows)
        self.mask, self.offset = self.mask[rows], self.offset[rows]

    def __call__(self, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        if self.dec is not None:
            if not self.padded:
                return self.dec(tokens, slot)
            return self.dec(tokens, slot, slot - self.offset, self.mask)
        if not self.padded:
            return self.gpt(tokens[:, None], caches=self.caches)[:, -1]
        return self.gpt(tokens[:, None], key_padding_mask=self.mask[:, :slot + 1],
                        positions=(slot - self.offset)[:, None], caches=self.caches)[:, -1]


@torch.no_grad()
def sample_groups(gpt, prompts: list[list[int]], group: int, max_new: int, stop: list[int], pad: int,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None, compact: bool = True) -> GroupRollout:
    """`group` completions of each prompt (ids), ordered prompt by prompt; see the module docstring."""
    start, param = time.perf_counter(), next(gpt.parameters())
    device, was_training = param.device, gpt.training
    gpt.eval()
    ids, mask = left_pad(prompts, pad, device)  # (P, T0) each
    (P, T0), N = ids.shape, len(prompts) * group
    if T0 + max_new > gpt.config.block_size:
        raise ValueError(f"prompt ({T0} tokens) + max_new ({max_new}) exceed the model's block_size "
                         f"{gpt.config.block_size}")
    padded = not bool(mask.all())
    caches = gpt.transformer.new_caches(P, T0 + max_new, device, param.dtype)
    logits = _prefill(gpt, ids, mask, caches, padded).repeat_interleave(group, 0)  # (N, V)
    _keep_rows(caches, torch.arange(P, device=device).repeat_interleave(group))  # each prompt's cache to its G rows
    full_mask = torch.ones(N, T0 + max_new, dtype=torch.bool, device=device)
    full_mask[:, :T0] = mask.repeat_interleave(group, 0)
    step = _Step(gpt, caches, full_mask, (T0 - mask.sum(1)).repeat_interleave(group, 0), padded)
    out = torch.full((N, max_new), pad, dtype=torch.long, device=device)
    logps = torch.zeros(N, max_new, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    alive = torch.arange(N, device=device)  # rows still running (all rows when compact=False)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    stops, row_steps = torch.as_tensor(sorted(set(stop)), dtype=torch.long, device=device), 0
    for n in range(max_new):
        u = torch.rand(N, generator=generator, device=device)
        tok, lp = pick(logits.float(), u[alive], temperature, top_k, top_p)
        live = ~done[alive]
        out[alive[live], n], logps[alive[live], n] = tok[live], lp[live]
        lengths[alive[live]] += 1
        done[alive[live & torch.isin(tok, stops)]] = True
        row_steps += len(alive)
        if bool(done.all()) or n + 1 == max_new:
            break
        if compact and bool(done[alive].any()):
            keep = (~done[alive]).nonzero().squeeze(-1)
            alive, tok = alive[keep], tok[keep]
            step.keep(keep)
        logits = step(tok, T0 + n)
    gpt.train(was_training)
    lengths = lengths.cpu()
    responses = [row[:k].tolist() for row, k in zip(out.cpu(), lengths.tolist())]
    return GroupRollout(responses, logps.cpu(), time.perf_counter() - start, row_steps)
