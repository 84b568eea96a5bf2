"""Chat template with special tokens, and the masks that put the SFT loss on response tokens only.

    <|user|>What is 52-38?<|end|><|assistant|>12-8=4,5-3-1=1. Answer: 14<|end|>
    '------------- prompt (mask 0) ------------''-------- response (mask 1) --------'
"""
from __future__ import annotations

import string

import torch

from ..tokenizers import CharTokenizer, Tokenizer

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIALS = (USER, ASSISTANT, END)
ALPHABET = string.ascii_letters + string.digits + " \n+-=?.,:!'"


def build_tokenizer() -> CharTokenizer:
    """Char-level vocabulary of the task's text plus pad, eos and the three chat tokens."""
    return CharTokenizer(ALPHABET, SPECIALS)


def render_prompt(prompt: str, style: str = "chat") -> str:
    """style "chat": the template; "qa": the pretraining corpus's plain Q:/A: format (to probe a base model)."""
    return f"{USER}{prompt}{END}{ASSISTANT}" if style == "chat" else f"Q: {prompt}\nA: "


def encode_prompt(tok: Tokenizer, prompt: str, style: str = "chat") -> list[int]:
    return tok.encode(render_prompt(prompt, style))


def encode_chat(tok: Tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(ids, loss_mask): the mask is 1 on the response and its closing <|end|>, 0 on the prompt."""
    p = encode_prompt(tok, prompt)
    r = tok.encode(response) + [tok.token_to_id(END)]
    return p + r, [0] * len(p) + [1] * len(r)


def stop_ids(tok: Tokenizer, style: str = "chat") -> list[int]:
    return [tok.token_to_id(END if style == "chat" else "\n"), tok.eos_id]


def decode_response(tok: Tokenizer, ids, style: str = "chat") -> str:
    """Generated ids -> text, cut at the first stop token."""
    stops, out = set(stop_ids(tok, style)), []
    for i in ids:
        if int(i) in stops:
            break
        out.append(int(i))
    return tok.decode(out)


def pad_right(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and a bool mask (B, T), True on real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def collate_chat(examples: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """[(ids, loss_mask)] -> {"ids" (B, T), "mask" (B, T) real tokens, "loss_mask" (B, T)}."""
    ids, mask = pad_right([e[0] for e in examples], pad)
    loss_mask, _ = pad_right([e[1] for e in examples], 0)
    return {"ids": ids, "mask": mask, "loss_mask": loss_mask.bool()}
