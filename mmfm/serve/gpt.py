"""GPT behind /v1/completions and /v1/chat/completions: requests become engine jobs, tokens come back as text
deltas (held back while they could still be the start of a stop string), streamed as server-sent events."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi.responses import JSONResponse, StreamingResponse

from ..align.chat import ASSISTANT, END, SPECIALS, USER, Turn, encode_turns
from .engine import Engine, Job
from .errors import APIError
from .schemas import MAX_CHOICES, ChatRequest, CompletionRequest


class TextStream:
    """One choice: token ids -> text; stops at a stop id (not kept) or stop string (cut before it). Events go to
    an asyncio queue as (index, "delta", text) and (index, "done", (finish_reason, n_tokens))."""

    def __init__(self, index: int, tokenizer, stop_ids: set[int], stops: list[str], loop, queue: asyncio.Queue):
        self.index, self.tok, self.stop_ids, self.stops = index, tokenizer, stop_ids, stops
        self.hold = max((len(s) for s in stops), default=1) - 1  # chars that could begin a stop string
        self.loop, self.queue = loop, queue
        self.ids: list[int] = []
        self.text, self.sent, self.n = "", 0, 0

    def _post(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, *event))

    def _flush(self, upto: int) -> None:
        if upto > self.sent:
            self._post("delta", self.text[self.sent:upto])
            self.sent = upto

    def on_token(self, token: int) -> bool:
        self.n += 1
        if token in self.stop_ids:
            return True
        self.ids.append(token)
        self.text = self.tok.decode(self.ids)
        cut = min((i for s in self.stops if (i := self.text.find(s, max(self.sent - len(s), 0))) >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return True
        safe = len(self.text) - self.hold
        while safe > self.sent and self.text[safe - 1] == "\ufffd":  # an unfinished multi-byte character
            safe -= 1
        self._flush(safe)
        return False

    def on_finish(self, reason: str) -> None:
        self.text = self.text.rstrip("\ufffd") if reason == "length" else self.text
        self._flush(len(self.text))
        self._post("done", (reason, self.n))


class GPTService:
    family = "gpt"

    def __init__(self, model_id: str, model, max_batch: int = 32):
        if model.tokenizer is None:
            raise ValueError(f"{model_id}: a GPT folder needs its tokenizer/ to be served (text in, text out)")
        self.id, self.model, self.tok = model_id, model, model.tokenizer
        self.block = model.config.block_size
        self.chat = all(self.tok.token_to_id(s) is not None for s in SPECIALS)
        self.engine = Engine(model, max_batch=max_batch)

    def describe(self) -> dict:
        return {"family": "gpt", "chat": self.chat, "context_length": self.block,
                "endpoints": ["/v1/completions"] + (["/v1/chat/completions"] if self.chat else [])}

    def close(self) -> None:
        self.engine.stop()

    # --- requests -> token ids ------------------------------------------------------------------------------
    def _encode(self, text: str, param: str) -> list[int]:
        try:
            ids = self.tok.encode(text)
        except (ValueError, TypeError) as e:
            raise APIError(400, f"'{param}' cannot be encoded by this model's tokenizer: {e}", param) from None
        return ids or [self.tok.eos_id]  # an empty prompt starts from end-of-text, as OpenAI's does

    def _prompts(self, prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            return [self._encode(prompt, "prompt")]
        if not prompt:
            raise APIError(400, "'prompt' is an empty list", "prompt")
        if isinstance(prompt[0], str):
            return [self._encode(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
        rows = [prompt] if isinstance(prompt[0], int) else prompt
        for i, r in enumerate(rows):
            bad = next((t for t in r if not 0 <= t < self.model.config.vocab_size), None)
            if not r or bad is not None:
                raise APIError(400, f"'prompt[{i}]': " + (f"token id {bad} is outside the vocabulary [0, "
                               f"{self.model.config.vocab_size})" if r else "an empty list of token ids"), "prompt")
        return [list(r) for r in rows]

    def _chat_ids(self, req: ChatRequest) -> list[int]:
        if not self.chat:
            raise APIError(400, f"model '{self.id}' was not trained with a chat template (its tokenizer has no "
                                f"{USER}, {ASSISTANT}, {END} tokens); use /v1/completions", "model")
        turns = [Turn("system" if m.role == "developer" else m.role, m.text()) for m in req.messages]
        try:
            return encode_turns(self.tok, turns, add_generation_prompt=True)[0]
        except (ValueError, TypeError) as e:
            raise APIError(400, f"'messages' cannot be encoded by this model's tokenizer: {e}", "messages") from None

    def _budget(self, rows: list[list[int]], max_tokens: int | None) -> int:
        longest = max(len(r) for r in rows)
        if max_tokens is None:
            max_tokens = self.block - longest
        if longest + max_tokens > self.block:
            raise APIError(400, f"This model's maximum context length is {self.block} tokens, however you requested "
                                f"{longest + max_tokens} tokens ({longest} in your prompt; {max_tokens} for the "
                                f"completion). Please reduce your prompt or 'max_tokens'.", "max_tokens",
                           "context_length_exceeded")
        return max_tokens

    def _submit(self, rows, req, max_tokens: int, stop_ids: set[int]):
        if len(rows) * req.n > MAX_CHOICES:
            raise APIError(400, f"{len(rows)} prompts x n={req.n} exceeds {MAX_CHOICES} choices per request", "n")
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        streams, jobs = [], []
        for i, ids in enumerate(rows):
            for j in range(req.n):
                s = TextStream(i * req.n + j, self.tok, stop_ids, req.stop_strings(), loop, queue)
                seed = None if req.seed is None else req.seed + j
                streams.append(s)
                jobs.append(Job(ids, max_tokens, s.on_token, s.on_finish, req.temperature, req.top_p, seed))
        try:
            for job in jobs:
                self.engine.submit(job)
        except RuntimeError as e:
            for job in jobs:
                job.cancel()
            raise APIError(429, f"{e}; retry later", code="server_busy", type="rate_limit_error") from None
        return streams, jobs, queue

    # --- endpoints ------------------------------------------------------------------------------------------
    async def completions(self, req: CompletionRequest):
        rows = self._prompts(req.prompt)
        max_tokens = self._budget(rows, req.max_tokens)
        return await self._respond(req, rows, max_tokens, {self.tok.eos_id}, chat=False)

    async def chat_completions(self, req: ChatRequest):
        rows = [self._chat_ids(req)]
        max_tokens = self._budget(rows, req.max_completion_tokens or req.max_tokens)
        return await self._respond(req, rows, max_tokens, {self.tok.token_to_id(END), self.tok.eos_id}, chat=True)

    async def _respond(self, req, rows, max_tokens: int, stop_ids: set[int], chat: bool):
        streams, jobs, queue = self._submit(rows, req, max_tokens, stop_ids)
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": self.id}
        prompt_tokens = sum(len(r) for r in rows) * req.n
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(streams, jobs, queue, meta, chat, prompt_tokens, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            finish = await _collect(queue, len(streams))
        finally:
            for job in jobs:
                job.cancel()
        choices = [_choice(s, finish[s.index][0], chat) for s in streams]
        completion = sum(n for _, n in finish.values())
        return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                             "usage": _usage(prompt_tokens, completion)})


async def _collect(queue: asyncio.Queue, n: int) -> dict[int, tuple[str, int]]:
    finish = {}
    while len(finish) < n:
        index, kind, value = await queue.get()
        if kind == "done":
            finish[index] = value
    return finish


def _reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _choice(s: TextStream, reason: str, chat: bool) -> dict:
    if chat:
        return {"index": s.index, "message": {"role": "assistant", "content": s.text}, "logprobs": None,
                "finish_reason": _reason(reason)}
    return {"index": s.index, "text": s.text, "logprobs": None, "finish_reason": _reason(reason)}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chunk(meta: dict, chat: bool, index: int, text: str | None, reason: str | None, first: bool = False) -> str:
    if chat:
        delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
    body = {**meta, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]}
    return f"data: {json.dumps(body)}\n\n"


async def _sse(streams, jobs, queue, meta, chat: bool, prompt_tokens: int, include_usage: bool):
    """Server-sent events: a chunk per text delta, a final chunk per choice with its finish_reason, optionally a
    usage chunk, then [DONE]. A client that goes away cancels its jobs."""
    try:
        if chat:
            for s in streams:
                yield _chunk(meta, chat, s.index, None, None, first=True)
        done, completion = 0, 0
        while done < len(streams):
            index, kind, value = await queue.get()
            if kind == "delta":
                yield _chunk(meta, chat, index, value, None)
            else:
                done, completion = done + 1, completion + value[1]
                yield _chunk(meta, chat, index, None, _reason(value[0]))
        if include_usage:
            body = {**meta, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [],
                    "usage": _usage(prompt_tokens, completion)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancel()
