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
    g = torch.Generator().manual_seed(seed)
    responses = generate_texts(gpt, tok, eval_prompts(problems, seed), temperature=temperature, generator=g,
                               style=style)
    return task_metrics(problems, responses)


@torch.no_grad()
def response_logprobs(gpt, tok, prompts: list[str], responses: list[str], batch_size: int = 128) -> torch.Tensor:
    """log p(response | prompt) summed over the response and its <|end|> -> (N,)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [encode_chat(tok, p, r) for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        ids, _ = pad_right([r[0] for r in rows], tok.pad_id)
        loss_mask, _ = pad_right([r[1] for r in rows], 0)
        out.append(sequence_logprobs(gpt(ids), ids, loss_mask))  # right padding: no key mask needed
    return torch.cat(out)


@torch.no_grad()
def kl_to_reference(policy, reference, tok, problems: list[Problem], seed: int = 0) -> float:
    """Monte-Carlo KL(policy || reference) per response: mean over y ~ policy of log pi(y) - log ref(y)."""
    g = torch.Generator().manual_seed(seed)
    prompts = eval_prompts(problems, seed)
    responses = generate_texts(policy, tok, prompts, temperature=1.0, generator=g)
    policy.eval(), reference.eval()
    diff = response_logprobs(policy, tok, prompts, responses) - response_logprobs(reference, tok, prompts, responses)
    return float(diff.mean())


@torch.no_grad()
def reward_scores(rm, tok, prompts: list[str], responses: list[str], batch_size: int = 128) -> torch.Tensor:
    """Reward-model scores of chats (prompt, response) -> (N,)."""
    rm.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [encode_chat(tok, p, r)[0] for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        out.append(rm(*pad_right(rows, tok.pad_id)))
    return torch.cat(out)
