"""Chat template with special tokens, and the masks that put the SFT loss on response tokens only.

    <|user|>What is 52-38?<|end|><|assistant|>12-8=4,5-3-1=1. Answer: 14<|end|>
    '------------- prompt (mask 0) ------------''-------- response (mask 1) --------'
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import torch

from ..tokenizers import CharTokenizer, Tokenizer

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIALS = (USER, ASSISTANT, END)
ALPHABET = string.ascii_letters + string.digits + " \n+-=?.,:!'"


def build_tokenizer() -> CharTokenizer:
    """Char-level vocabulary of the task's text plus pad, eos and the three chat tokens."""
    return CharTokenizer(ALPHABET, SPECIALS)


SYSTEM = "<|system|>"  # used when a tokenizer has it; otherwise a system turn is folded into the first user turn
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation; `train` puts the loss on its content and closing <|end|>."""

    role: str  # "system", "user" or "assistant"
    content: str
    train: bool = False


def special_id(tok: Tokenizer, token: str) -> int:
    """The id of a chat token, looked up explicitly (user text never becomes a special token)."""
    i = tok.token_to_id(token)
    if i is None:
        raise ValueError(f"the model's tokenizer has no {token} token; the chat template needs "
                         f"{', '.join(SPECIALS)} as special tokens (mmfm.align.chat.build_tokenizer has them)")
    return i


def _fold_system(tok: Tokenizer, turns: list[Turn]) -> list[Turn]:
    """Without a <|system|> token, a system turn's text opens the next user turn (as Llama-2's template does)."""
    if tok.token_to_id(SYSTEM) is not None or not any(t.role == "system" for t in turns):
        return turns
    out, pending = [], []
    for t in turns:
        if t.role == "system":
            pending.append(t.content)
        elif pending and t.role == "user":
            out.append(Turn("user", "\n\n".join([*pending, t.content]), t.train))
            pending = []
        else:
            out.append(t)
    return out + [Turn("user", "\n\n".join(pending))] if pending else out


def encode_turns(tok: Tokenizer, turns: list[Turn], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of <|role|>content<|end|> per turn; the mask is 1 on the content and <|end|> of
    turns with `train` set (assistant turns), 0 on role tokens and everything else. With
    add_generation_prompt, an <|assistant|> header follows for the model to answer."""
    role_token = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
    end, ids, mask = special_id(tok, END), [], []
    for t in _fold_system(tok, turns):
        body = tok.encode(t.content) + [end]
        ids += [special_id(tok, role_token[t.role]), *body]
        mask += [0] + [int(t.train)] * len(body)
    if add_generation_prompt:
        ids.append(special_id(tok, ASSISTANT))
        mask.append(0)
    return ids, mask


def render_prompt(prompt: str, style: str = "chat") -> str:
    """style "chat": the template; "qa": the pretraining corpus's plain Q:/A: format (to probe a base model)."""
    return f"{USER}{prompt}{END}{ASSISTANT}" if style == "chat" else f"Q: {prompt}\nA: "


def encode_prompt(tok: Tokenizer, prompt: str | list[Turn], style: str = "chat") -> list[int]:
    """Ids of a prompt (a user message, or turns) ready for the model's answer."""
    if style != "chat":
        return tok.encode(render_prompt(prompt, style))
    turns = [Turn("user", prompt)] if isinstance(prompt, str) else prompt
    return encode_turns(tok, turns, add_generation_prompt=True)[0]


def encode_chat(tok: Tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(ids, loss_mask): the mask is 1 on the response and its closing <|end|>, 0 on the prompt."""
    return encode_turns(tok, [Turn("user", prompt), Turn("assistant", response, train=True)])


def stop_ids(tok: Tokenizer, style: str = "chat") -> list[int]:
    return [special_id(tok, END) if style == "chat" else tok.encode("\n")[0], tok.eos_id]


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
