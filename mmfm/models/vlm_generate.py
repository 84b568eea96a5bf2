"""Sampling text from a VLM with a KV cache: the image enters once, then one token per step.

    out = generate_with_image(vlm, images (B, C, H, W), ["caption:"] * B, max_new_tokens=40, temperature=0)
    out.texts()     # the new text per row (stops after <eos>)

Prefix fusion: the prompt and the projected image tokens fill the cache in one forward; every later token is
one step of the stack's fast decoder (`GPT.decoder`, the same one text generation uses). Cross fusion: the
image tokens are the cross-attention's context; the self-attention keys and values are cached and each step
runs the module forward on one token. Rows whose prompts have different lengths are decoded in groups of equal
length, so that no row carries padding and each equals running it alone.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from .generation import Generation, _as_rows, _check_ids, check_sampling, sample_next


def _check(model, images, rows, max_new_tokens, temperature, top_k, top_p):
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    c = model.config
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise TypeError(f"images: expected a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if tuple(images.shape[1:]) != (c.in_chans, c.img_size, c.img_size):
        raise ValueError(f"images: the model takes (B, {c.in_chans}, {c.img_size}, {c.img_size}), "
                         f"got {tuple(images.shape)}")
    if len(rows) != images.shape[0]:
        raise ValueError(f"prompts: {len(rows)} prompts for {images.shape[0]} images (one prompt per image)")
    if any(len(r) == 0 for r in rows):
        raise ValueError("prompts: every prompt needs at least one token")
    for i, r in enumerate(rows):
        _check_ids(f"prompts[{i}]", r, c.vocab_size)
    room = c.block_size - (c.image_tokens if c.fusion == "prefix" else 0)
    longest = max(len(r) for r in rows) + max_new_tokens
    if longest > room:
        raise ValueError(f"max_new_tokens: prompt + max_new_tokens = {longest} tokens exceed the model's text room "
                         f"of {room} (block_size {c.block_size}" + (f" minus {c.image_tokens} image tokens)"
                                                                    if c.fusion == "prefix" else ")"))


def _one_group(model, images, prompt, N, pick, eos_id):
    """Decode one group of equal-length prompts (B, T0) -> new tokens (B, n) and lengths (B,)."""
    lm, (B, T0) = model.lm, prompt.shape
    image = model.image_embeddings(images)  # (B, P, C)
    prefix = model.config.fusion == "prefix"
    P = image.shape[1] if prefix else 0
    p = next(model.parameters())
    caches = lm.transformer.new_caches(B, P + T0 + N, p.device, p.dtype)
    context = None if prefix else image
    logits = lm(prompt, caches=caches, prefix=image if prefix else None, context=context)[:, -1]  # (B, V)
    step = lm.decoder(caches) if prefix else None  # the fast path covers plain causal stacks only
    out = torch.full((B, N), eos_id, dtype=torch.long, device=p.device)
    done = torch.zeros(B, dtype=torch.bool, device=p.device)
    lengths = torch.zeros(B, dtype=torch.long, device=p.device)
    for n in range(N):
        nxt = pick(logits.float()).masked_fill(done, eos_id)  # (B,)
        out[:, n] = nxt
        hit = nxt == eos_id
        lengths += ~(done | hit)  # the text before <eos>
        done |= hit
        if bool(done.all()) or n == N - 1:
            break
        if step is not None:
            logits = step(nxt, caches[0].length)
        else:
            logits = lm(nxt[:, None], caches=caches, context=context)[:, -1]
    return out, lengths


@torch.no_grad()
def generate_with_image(model, images: torch.Tensor, prompts, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None,
                        generator: torch.Generator | None = None, tokenizer=None) -> Generation:
    """New tokens after each (image, prompt) pair; a row stops at the tokenizer's <eos> (`lengths` counts the
    tokens before it, so `.texts()` is the text alone). Every argument is checked first (a TypeError or
    ValueError naming it). images: uint8 pixels or normalised floats (B, C, H, W); prompts: one string (for
    every image), a list of strings, or lists of token ids. temperature 0 is greedy."""
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if isinstance(prompts, str):
        prompts = [prompts] * (images.shape[0] if isinstance(images, torch.Tensor) and images.dim() == 4 else 1)
    rows = _as_rows(prompts, tok)
    _check(model, images, rows, max_new_tokens, temperature, top_k, top_p)
    eos = tok.eos_id if tok is not None else model.config.vocab_size - 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        groups[len(r)].append(i)
    N = max(max_new_tokens, 1)
    tokens = torch.full((len(rows), N), eos, dtype=torch.long)
    lengths = torch.zeros(len(rows), dtype=torch.long)
    pick = lambda logits: sample_next(logits, temperature, top_k, top_p, generator)  # noqa: E731
    for idx in groups.values():
        prompt = torch.tensor([rows[i] for i in idx], dtype=torch.long, device=device)  # (b, T0)
        new, n = _one_group(model, images[idx].to(device), prompt, N, pick, eos)
        tokens[idx], lengths[idx] = new.cpu(), n.cpu()
    model.train(was_training)
    if max_new_tokens == 0:
        tokens, lengths = tokens[:, :0], torch.zeros_like(lengths)
    width = int(lengths.max()) if len(lengths) else 0
    return Generation(tokens[:, :width], lengths, None, tok, eos)
