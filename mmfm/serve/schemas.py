"""Request bodies in OpenAI's shapes, validated strictly: wrong types and unknown fields are 400s naming the
parameter. OpenAI parameters mmfm does not implement are accepted only at their neutral value, so that none
is silently ignored."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import APIError

MAX_CHOICES = 64  # prompts x n of one request


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    neutral: ClassVar[dict] = {}  # unsupported OpenAI parameters -> the only value accepted

    @model_validator(mode="after")
    def _unsupported(self):
        for name, ok in self.neutral.items():
            value = getattr(self, name)
            if value is not None and value != ok and not (ok is None and value in ({}, [], False, 0)):
                raise APIError(400, f"'{name}' is not supported by mmfm serve (got {value!r}); leave it out", name)
        return self


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None  # an end-user id for the caller's own logs; nothing to do with generation
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    neutral: ClassVar[dict] = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None}

    @model_validator(mode="after")
    def _stops(self):
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise APIError(400, f"'stop' takes at most 4 sequences, got {len(self.stop)}", "stop")
        return self

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions; null: up to the context
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    neutral: ClassVar[dict] = {**Sampling.neutral, "echo": False, "logprobs": None, "best_of": 1, "suffix": None}


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None
    neutral: ClassVar[dict] = {**Sampling.neutral, "logprobs": False, "top_logprobs": None, "tools": None,
                               "tool_choice": None}

    @model_validator(mode="after")
    def _format(self):
        if self.response_format not in (None, {"type": "text"}):
            raise APIError(400, "'response_format' other than {\"type\": \"text\"} is not supported by mmfm serve",
                           "response_format")
        return self


class ImageInput(Strict):
    image: str  # base64 or a data: URL


class EmbeddingRequest(Strict):
    model: str
    input: str | ImageInput | list[str | ImageInput] = Field(union_mode="left_to_right")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ClassifyRequest(Strict):
    model: str
    image: str  # base64 or a data: URL
    labels: list[str] = Field(min_length=1, max_length=1000)
    template: str = "{}"  # each label is put through template.format(label)


class ImageRequest(Strict):
    model: str
    prompt: str = ""  # a class name (class-conditional DiT) or a text prompt (text-conditioned DiT)
    n: int = Field(1, ge=1, le=16)
    guidance: float = Field(2.0, ge=0.0, le=20.0, allow_inf_nan=False)
    steps: int = Field(20, ge=1, le=200)
    seed: int | None = None
    response_format: Literal["b64_json"] = "b64_json"
    user: str | None = None
