"""Rollouts: batched sampling of chat responses (the shared KV-cache `generate`), held-out task
accuracy, log-probs of given responses, reward-model scores, and the KL to a reference model."""
from __future__ import annotations

import random

import torch

from ..losses.preference import sequence_logprobs
from ..models.generation import generate
from .chat import decode_response, encode_chat, encode_prompt, pad_right, stop_ids
from .task import Problem, judge, prompt_text


def sample(gpt, prompts: list[list[int]], max_new: int, stop: list[int], pad: int, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> list[list[int]]:
    """Responses (each ending with its stop token when one was sampled) for a batch of prompt ids;
    greedy when temperature is 0. The shared KV-cache `generate` does the work."""
    return generate(gpt, prompts, max_new, temperature=temperature, stop_tokens=stop, generator=generator,
                    pad_id=pad).tolist()


def generate_texts(gpt, tok, prompts: list[str], max_new: int = 96, temperature: float = 0.0,
                   batch_size: int = 256, generator=None, style: str = "chat") -> list[str]:
    """Prompts rendered in `style` -> response texts (cut at the stop token)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [encode_prompt(tok, p, style) for p in prompts[i:i + batch_size]]
        resp = sample(gpt, ids, max_new, stop_ids(tok, style), tok.pad_id, temperature, generator)
        out += [decode_response(tok, r, style) for r in resp]
    return out


def eval_prompts(problems: list[Problem], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [prompt_text(p, rng) for p in problems]


def task_metrics(problems: list[Problem], responses: list[str]) -> dict[str, float]:
    """accuracy (correct final answer), answer rate, mean response length in characters."""
    levels = [judge(p, r)[0] for p, r in zip(problems, responses)]
    n = max(len(levels), 1)
    return {"accuracy": sum(lv == 2 for lv in levels) / n, "answer_rate": sum(lv > 0 for lv in levels) / n,
            "mean_len": sum(len(r) for r in responses) / n}


def evaluate(gpt, tok, problems: list[Problem], temperature: float = 0.0, seed: int = 0,
             style: str = "chat") -> dict[str, float]:
    """Held-out task metrics of one model; greedy unless a temperature is given."""
    g = torch.Generator(_device(gpt)).manual_seed(seed)
    responses = generate_texts(gpt, tok, eval_prompts(problems, seed), temperature=temperature, generator=g,
                               style=style)
    return task_metrics(problems, responses)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def rows_logprobs(gpt, rows: list[tuple[list[int], list[int]]], pad: int, batch_size: int = 128) -> torch.Tensor:
    """log p of the masked tokens of each (ids, loss_mask) row, summed -> (N,) on the model's device."""
    out, device = [], _device(gpt)
    for i in range(0, len(rows), batch_size):
        ids, _ = pad_right([r[0] for r in rows[i:i + batch_size]], pad)
        loss_mask, _ = pad_right([r[1] for r in rows[i:i + batch_size]], 0)
        ids = ids.to(device)
        out.append(sequence_logprobs(gpt(ids), ids, loss_mask.to(device)))  # right padding: no key mask needed
    return torch.cat(out)


def response_logprobs(gpt, tok, prompts: list[str], responses: list[str], batch_size: int = 128) -> torch.Tensor:
    """log p(response | prompt) summed over the response and its <|end|> -> (N,)."""
    return rows_logprobs(gpt, [encode_chat(tok, p, r) for p, r in zip(prompts, responses)], tok.pad_id, batch_size)


def sample_rows(gpt, tok, prompts: list[list[int]], temperature: float, seed: int = 0, max_new: int = 96,
                batch_size: int = 256) -> list[tuple[list[int], list[int]]]:
    """(prompt + response ids, mask on the response) for each prompt's sampled response (cut at its stop token,
    which is kept: the same rows the chat template gives)."""
    g = torch.Generator(_device(gpt)).manual_seed(seed)
    stops, rows = set(stop_ids(tok)), []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        for p, r in zip(chunk, sample(gpt, chunk, max_new, sorted(stops), tok.pad_id, temperature, g)):
            cut = next((j + 1 for j, t in enumerate(r) if t in stops), len(r))
            rows.append((p + r[:cut], [0] * len(p) + [1] * cut))
    return rows


@torch.no_grad()
def kl_to_reference(policy, reference, tok, problems: list[Problem] | list[list[int]], seed: int = 0) -> float:
    """Monte-Carlo KL(policy || reference) per response: mean over y ~ policy (T=1) of log pi(y) - log ref(y).
    `problems`: task problems, or prompt ids (chat-encoded)."""
    if problems and isinstance(problems[0], Problem):
        problems = [encode_prompt(tok, p) for p in eval_prompts(problems, seed)]
    policy.eval(), reference.eval()
    rows = sample_rows(policy, tok, problems, 1.0, seed)
    return float((rows_logprobs(policy, rows, tok.pad_id) - rows_logprobs(reference, rows, tok.pad_id)).mean())


@torch.no_grad()
def reward_scores(rm, tok, prompts: list[str], responses: list[str], batch_size: int = 128) -> torch.Tensor:
    """Reward-model scores of chats (prompt, response) -> (N,)."""
    return rows_scores(rm, [encode_chat(tok, p, r)[0] for p, r in zip(prompts, responses)], tok.pad_id, batch_size)


@torch.no_grad()
def rows_scores(rm, rows: list[list[int]], pad: int, batch_size: int = 128) -> torch.Tensor:
    """Reward-model scores of chat ids -> (N,) on the model's device."""
    rm.eval()
    out, device = [], _device(rm)
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_right(rows[i:i + batch_size], pad)
        out.append(rm(ids.to(device), mask.to(device)))
    return torch.cat(out)


@torch.no_grad()
def chat_nll(gpt, rows: list[tuple[list[int], list[int]]], pad: int, batch_size: int = 128) -> float:
    """Mean negative log-likelihood per trained (assistant) token of (ids, loss_mask) rows."""
    gpt.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        total -= float(rows_logprobs(gpt, chunk, pad, batch_size).sum())
        count += sum(sum(r[1][1:]) for r in chunk)
    return total / max(count, 1)
