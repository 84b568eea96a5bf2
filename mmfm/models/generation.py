"""Autoregressive sampling for causal LMs (GPT) with a KV cache and batched prompts of different lengths.

    out = generate(model, ["ROMEO:\\n", "JULIET:\\nO"], max_new_tokens=100, temperature=0.8, top_k=40)
    out.tokens      # (B, N) new token ids, right-padded with pad_id after a row stops
    out.lengths     # (B,) number of new tokens per row (a stop token / string included)
    out.logprobs    # (B, N) log p(token) under the model's raw distribution (return_logprobs=True)
    out.texts()     # decoded new text per row (with the model's tokenizer)
"""
from __future__ import annotations

import contextlib
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from . import windowed

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """New tokens per prompt: `tokens` (B, N) right-padded with `pad_id`, `lengths` (B,), optional `logprobs`."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    logprobs: torch.Tensor | None = None
    tokenizer: object = None
    pad_id: int = 0

    def tolist(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths.tolist())]

    def texts(self, tokenizer=None) -> list[str]:
        tok = tokenizer or self.tokenizer
        if tok is None:
            raise ValueError("decoding needs a tokenizer: pass one, or set model.tokenizer")
        return [tok.decode(ids) for ids in self.tolist()]

    def __getitem__(self, i: int) -> list[int]:
        return self.tokens[i, : int(self.lengths[i])].tolist()

    def __len__(self) -> int:
        return self.tokens.shape[0]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> left-padded ids (B, T) and a bool mask (B, T), True on real tokens."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long, device=device)
        mask[i, width - len(r):] = True
    return ids, mask


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf all logits (B, V) outside the top k and outside the smallest set with mass >= top_p."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits (B, V): greedy when temperature == 0, else filtered sampling. -> (B,)"""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _id_row(r, i: int) -> list[int]:
    """One prompt row of token ids as a list of ints; floats, bools and strings are refused."""
    if isinstance(r, torch.Tensor):
        if r.dim() != 1 or r.dtype.is_floating_point or r.dtype.is_complex or r.dtype == torch.bool:
            raise TypeError(f"prompts[{i}]: expected a 1-D integer tensor of token ids, got {r.dtype} {tuple(r.shape)}")
        return r.tolist()
    if isinstance(r, (str, bytes)) or not hasattr(r, "__iter__"):
        raise TypeError(f"prompts[{i}]: expected a list of token ids, got {type(r).__name__} "
                        "(prompts are all strings or all lists of token ids)")
    row = list(r)
    bad = next((x for x in row if not _is_int(x)), None)
    if bad is not None:
        raise TypeError(f"prompts[{i}]: token ids must be ints, got {bad!r} ({type(bad).__name__})")
    return [int(x) for x in row]


def _as_rows(prompts, tokenizer) -> list[list[int]]:
    """Prompts (a string, strings, a (B, T) / (T,) integer tensor, or lists of ids) -> lists of ints."""
    if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                    and all(isinstance(p, str) for p in prompts)):
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer: pass tokenizer=, or set model.tokenizer")
        return [tokenizer.encode(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() not in (1, 2):
            raise TypeError(f"prompts: expected a (B, T) or (T,) tensor of token ids, got shape {tuple(prompts.shape)}")
        return [_id_row(r, i) for i, r in enumerate(prompts[None] if prompts.dim() == 1 else prompts)]
    if isinstance(prompts, (bytes, dict, set)) or not hasattr(prompts, "__iter__"):
        raise TypeError(f"prompts: expected a string, a list of strings, a tensor or lists of token ids, "
                        f"got {type(prompts).__name__}")
    return [_id_row(r, i) for i, r in enumerate(prompts)]


def check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    """TypeError / ValueError naming the argument for sampling settings that cannot mean anything."""
    if not _is_int(max_new_tokens):
        raise TypeError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r} ({type(max_new_tokens).__name__})")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not _is_real(temperature):
        raise TypeError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and not _is_int(top_k):
        raise TypeError(f"top_k must be None or an int >= 1, got {top_k!r} ({type(top_k).__name__})")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (None: no top-k filter), got {top_k}")
    if top_p is not None and not _is_real(top_p):
        raise TypeError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if top_p is not None and not 0 < top_p <= 1:  # NaN fails both comparisons
        raise ValueError(f"top_p must be in (0, 1] (None: no nucleus filter), got {top_p}")


def _check_ids(name: str, ids, vocab: int, hint: str = "") -> None:
    """Every id in `ids` lies in [0, vocab)."""
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise ValueError(f"{name}: token id {bad} is outside the model's vocabulary [0, {vocab}){hint}")


def _check_stops(stop_tokens, stop_strings, vocab: int) -> None:
    if stop_tokens is not None:
        if isinstance(stop_tokens, (str, bytes)) or not hasattr(stop_tokens, "__iter__"):
            raise TypeError(f"stop_tokens must be a list of token ids, got {type(stop_tokens).__name__}")
        stop_tokens = list(stop_tokens)
        bad = next((t for t in stop_tokens if not _is_int(t)), None)
        if bad is not None:
            raise TypeError(f"stop_tokens: token ids must be ints, got {bad!r} ({type(bad).__name__})")
        _check_ids("stop_tokens", stop_tokens, vocab)
    if stop_strings is not None:
        if isinstance(stop_strings, (str, bytes)) or not hasattr(stop_strings, "__iter__"):
            raise TypeError(f"stop_strings must be a list of strings (not one string: ['\\n'], not '\\n'), "
                            f"got {type(stop_strings).__name__}")
        bad = next((s for s in stop_strings if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(f"stop_strings: each must be a str, got {bad!r} ({type(bad).__name__})")


def _check_generate(model, rows, max_new_tokens, temperature, top_k, top_p, stop_tokens, stop_strings,
                    pad_id, generator, text: bool, threads=None) -> None:
    """Every argument of `generate`, before any torch work: a TypeError / ValueError naming it."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    vocab = model.config.vocab_size
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("prompts: every prompt needs at least one token")
    hint = " (the tokenizer does not match the model)" if text else ""
    for i, r in enumerate(rows):
        _check_ids(f"prompts[{i}]", r, vocab, hint)
    if not _is_int(pad_id):
        raise TypeError(f"pad_id must be an int, got {pad_id!r} ({type(pad_id).__name__})")
    _check_ids("pad_id", [pad_id], vocab)
    _check_stops(stop_tokens, stop_strings, vocab)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if threads is not None and not _is_int(threads):
        raise TypeError(f"threads must be None (automatic) or an int >= 1, got {threads!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be None (automatic) or an int >= 1, got {threads}")
    longest, block = max(len(r) for r in rows) + max_new_tokens, model.config.block_size
    if longest > block:
        log.warning("prompt + max_new_tokens = %d tokens exceed block_size %d: past it the context is a sliding "
                    "window of at most the last %d tokens (rotary positions: a rolling KV cache; learned positions: "
                    "the cache is refilled with the last %d tokens whenever it is full)",
                    longest, block, block, block // 2)


class _Stopper:
    """Tracks which rows are done: a stop token, or a stop string in the decoded new text."""

    def __init__(self, batch: int, stop_tokens, stop_strings, tokenizer, device):
        self.stop_tokens = torch.as_tensor(sorted(set(stop_tokens or ())), dtype=torch.long, device=device)
        self.stop_strings = [s for s in (stop_strings or ()) if s]
        if self.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer: pass tokenizer=, or set model.tokenizer")
        self.tokenizer, self.tail = tokenizer, max((len(s) for s in self.stop_strings), default=0) + 2
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)

    def update(self, new: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """new: (B, n) tokens so far, nxt (B,) their last column. Returns `done` (B,) after this token."""
        self.lengths += ~self.done
        hit = torch.isin(nxt, self.stop_tokens) if self.stop_tokens.numel() else torch.zeros_like(self.done)
        for i in (~(self.done | hit)).nonzero().flatten().tolist() if self.stop_strings else ():
            text = self.tokenizer.decode(new[i, -self.tail:].tolist())
            hit[i] = any(s in text for s in self.stop_strings)
        self.done |= hit
        return self.done


def _step_logits(model, seq, mask, caches, n_new: int, padded: bool):
    """Logits (B, V) of the next token. With caches: feed only the last `n_new` columns (the whole
    prompt at prefill); without: the last block_size columns, positions recounted from the mask."""
    if caches is None:
        T = model.config.block_size
        seq, mask = seq[:, -T:], mask[:, -T:]
        padded, n_new = not bool(mask.all()), seq.shape[1]
    if not padded:  # the fast path: no mask, positions from the cache length
        return model(seq[:, -n_new:], caches=caches)[:, -1]
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)[:, -n_new:]  # (B, n_new)
    return model(seq[:, -n_new:], key_padding_mask=mask, positions=positions, caches=caches)[:, -1]


def _fast_step(model, seq, mask, T0: int, caches, padded: bool):
    """The model's one-token decoder over `caches` as slot -> logits (B, V); None: use the module forward."""
    make = getattr(model, "decoder", None)
    dec = make(caches) if caches is not None and make is not None else None
    if dec is None:
        return None
    if not padded:
        return lambda slot: dec(seq[:, slot], slot)
    offset = T0 - mask[:, :T0].sum(1)  # (B,) left padding: a row's position = slot - offset
    return lambda slot: dec(seq[:, slot], slot, slot - offset, mask)


def _in_window(model, seq, mask, T0: int, caches, padded: bool):
    """next_logits(n, cur) while every column fits in block_size (or without a cache: the last block_size)."""
    step = _fast_step(model, seq, mask, T0, caches, padded)

    def next_logits(n: int, cur: int) -> torch.Tensor:
        if step is not None and n > 1:  # feed the last token, cache slot cur - 1
            return step(cur - 1)
        return _step_logits(model, seq[:, :cur], mask[:, :cur], caches, T0 if n == 1 else 1, padded)
    return next_logits


def _next_logits_fn(model, seq, mask, T0: int, N: int, use_cache: bool, padded: bool):
    """next_logits(n, cur): a KV cache inside block_size, a windowed cache past it (mmfm.models.windowed),
    or the cacheless re-run of the last block_size columns."""
    kind = windowed.plan(model, T0, N, use_cache)
    if kind is not None:
        window = windowed.WindowedDecode(model, seq, mask, T0, N, kind, _step_logits)
        if window.usable:
            return window.next_logits
    p = next(model.parameters())
    fits = use_cache and T0 + N <= model.config.block_size
    caches = model.transformer.new_caches(seq.shape[0], T0 + N, p.device, p.dtype) if fits else None
    return _in_window(model, seq, mask, T0, caches, padded)


SMALL_STEP = 2 ** 22  # multiply-adds of a step's weight matrices times the batch: one thread at or below


def decode_threads(model, batch: int) -> int:
    """Intra-op threads for the one-token steps of `generate` on the CPU (the prefill keeps torch's setting).

    A step of a small model is a chain of ~100 kernels of a few microseconds each; spreading each one over
    several threads costs a fork and a barrier per kernel, and on a shared machine a barrier waits for a
    descheduled thread (docs/performance.md, round ten). So: one thread while a step's weight matrices times
    the batch stay under SMALL_STEP multiply-adds, torch's setting above that, and on other devices."""
    p = next(model.parameters())
    if p.device.type != "cpu":
        return torch.get_num_threads()
    matrices = sum(q.numel() for q in model.transformer.parameters() if q.dim() == 2)
    return 1 if batch * matrices <= SMALL_STEP else torch.get_num_threads()


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """torch.set_num_threads(n) inside the block (None: unchanged), restored after."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _decode(seq, T0: int, N: int, next_logits, stopper, logps, pad_id: int, pick, threads: int | None = None) -> int:
    """Fill seq[:, T0:T0 + N] token by token, the steps after the prefill on `threads` intra-op threads;
    returns the number of steps taken."""
    n = 0
    with contextlib.ExitStack() as after_prefill:
        for n in range(1, N + 1):
            if n == 2:
                after_prefill.enter_context(intra_op_threads(threads))
            cur = T0 + n - 1  # tokens so far
            logits = next_logits(n, cur).float()
            nxt = pick(logits)  # (B,)
            if stopper is not None:
                nxt = nxt.masked_fill(stopper.done, pad_id)
            seq[:, cur] = nxt
            if logps is not None:
                logps[:, n - 1] = torch.log_softmax(logits, -1).gather(-1, nxt[:, None]).squeeze(-1)
            if stopper is not None and bool(stopper.update(seq[:, T0:cur + 1], nxt).all()):
                break
    return n


@torch.no_grad()
def generate(model, prompts, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_tokens: Sequence[int] | None = None,
             stop_strings: Sequence[str] | None = None, return_logprobs: bool = False, use_cache: bool = True,
             generator: torch.Generator | None = None, tokenizer=None, pad_id: int | None = None,
             threads: int | None = None) -> Generation:
    """Sample up to `max_new_tokens` new tokens after each prompt.

    model: a causal LM with `model(idx, key_padding_mask, positions, caches) -> logits (B, T, V)`,
        `model.transformer.new_caches` and `model.config.block_size` (an mmfm GPT).
    prompts: a (B, T) or (T,) LongTensor, a list of token-id lists of different lengths (left-padded
        internally; each row's result equals running it alone), a string or a list of strings
        (encoded with `tokenizer`, default `model.tokenizer`).
    temperature: 0 is greedy decoding (a finite number >= 0); top_k (an int >= 1) / top_p (in (0, 1]) filter
        the tempered distribution. Prompt, pad and stop ids must lie in the model's vocabulary; every
        argument is checked before any torch work (TypeError / ValueError naming it).
    stop_tokens / stop_strings: a row stops after emitting one of the tokens, or once its decoded new
        text contains one of the strings; the stopping token is kept, later positions hold `pad_id`.
    return_logprobs: also return log p(token) under the model's raw (temperature 1, unfiltered) distribution.
    use_cache: decode with a KV cache (fast). Past block_size (a logged warning) the context slides: with
        rotary positions a rolling KV cache gives every token the last block_size tokens (as a banded causal
        mask would); with learned positions the cache is refilled with the last block_size // 2 tokens
        whenever it is full (mmfm.models.windowed). A prompt longer than block_size keeps its last
        block_size tokens. Without a cache each step re-runs the last block_size tokens (positions recounted
        inside the window, as in training): exact, and slower by the window's length.
    generator: a torch.Generator for reproducible sampling.
    threads: intra-op threads for the one-token steps after the prefill (torch.set_num_threads inside the
        call, restored after; process-wide, as torch's setting is). None: `decode_threads(model, batch)`,
        one thread for small models on the CPU, with a cache (without one, every step is a full-window
        forward and keeps torch's setting). The tokens do not depend on it.
    Returns a Generation: tokens (B, N), lengths (B,), logprobs (B, N) or None; `.tolist()`, `.texts()`.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_id", None) or 0
    rows = _as_rows(prompts, tokenizer)
    _check_generate(model, rows, max_new_tokens, temperature, top_k, top_p, stop_tokens, stop_strings, pad_id,
                    generator, text=isinstance(prompts, (str, list, tuple)) and bool(prompts)
                    and isinstance(prompts[0], str), threads=threads)
    param = next(model.parameters())
    prompt, prompt_mask = left_pad(rows, pad_id, param.device)  # (B, T0) each
    (B, T0), N = prompt.shape, max_new_tokens
    seq = torch.full((B, T0 + N), pad_id, dtype=torch.long, device=param.device)  # prompt, then new tokens
    mask = torch.ones((B, T0 + N), dtype=torch.bool, device=param.device)
    seq[:, :T0], mask[:, :T0] = prompt, prompt_mask
    padded = not bool(prompt_mask.all())
    stopper = _Stopper(B, stop_tokens, stop_strings, tokenizer, param.device) if stop_tokens or stop_strings else None
    logps = torch.zeros((B, N), device=param.device) if return_logprobs else None
    was_training = model.training
    model.eval()
    next_logits = _next_logits_fn(model, seq, mask, T0, N, use_cache, padded)
    with torch.inference_mode():  # less per-op overhead than no_grad; results are cloned out below
        n = _decode(seq, T0, N, next_logits, stopper, logps, pad_id,
                    lambda logits: sample_next(logits, temperature, top_k, top_p, generator),
                    threads if threads is not None or not use_cache else decode_threads(model, B))
    model.train(was_training)
    tokens = seq[:, T0:T0 + n].cpu().clone()  # (B, n)
    lengths = torch.full((B,), n, dtype=torch.long) if stopper is None else stopper.lengths.cpu().clone()
    lp = None
    if logps is not None:
        lp = logps[:, :n].cpu().clone().masked_fill(torch.arange(n)[None] >= lengths[:, None], 0.0)
    return Generation(tokens, lengths, lp, tokenizer, pad_id)
