"""The alignment recipes' data layer: a user's JSONL in TRL's dataset shapes, read into conversation turns.

    chat (sft)           {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
                         {"prompt": "Hi", "completion": "Hello"}   (either field plain or a list of messages)
    preferences (rm/dpo) {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}   (plain or messages;
                         without "prompt", chosen and rejected are whole conversations sharing the prompt)
    prompts (ppo)        {"prompt": "What is 2+2?", "answer": "4"}   (any extra columns go to the reward functions)

The loss falls on assistant turns only: every assistant turn of "messages", the completion of a
prompt-completion record. Errors name the file and line. The built-in arithmetic task writes these same
shapes (mmfm.align.builtin) and is read back through here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.formats import DataFormatError, Format, read_jsonl, read_utf8, require_path, split_examples, unknown_format
from .chat import ROLES, Turn, encode_turns

log = logging.getLogger(__name__)

CHAT_FORMATS = (
    Format("conversational", "a .jsonl file whose records have 'messages', a list of {role, content} "
           "(roles system/user/assistant)",
           '{"messages": [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]}\n'
           '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, '
           '{"role": "assistant", "content": "Hello"}]}'),
    Format("prompt-completion", "a .jsonl file whose records have 'prompt' and 'completion' (strings or lists of "
           "messages)", '{"prompt": "What is 2+3?", "completion": "5"}\n'
           '{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}'),
)
PREFERENCE_FORMATS = (
    Format("preference", "a .jsonl file whose records have 'prompt', 'chosen' and 'rejected' (strings or lists of "
           "messages)", '{"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}\n'
           '{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}], '
           '"rejected": [{"role": "assistant", "content": "Go away"}]}'),
    Format("implicit-prompt preference", "'chosen' and 'rejected' only: two whole conversations whose shared "
           "leading messages are the prompt",
           '{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], '
           '"rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]}'),
)
PROMPT_FORMATS = (
    Format("prompts", "a .jsonl file whose records have 'prompt' (a string or a list of messages) and any extra "
           "columns, which are passed to the reward functions",
           '{"prompt": "What is 2+3?", "answer": "5"}\n'
           '{"prompt": [{"role": "user", "content": "What is 7-4?"}], "answer": "3"}'),
)


@dataclass
class Example:
    """One record: its conversation turns (for chat: the whole example; for preferences and prompts: the
    prompt), where it came from (file:line), and the extra columns."""

    where: str
    turns: list[Turn]
    chosen: list[Turn] = field(default_factory=list)  # preferences only
    rejected: list[Turn] = field(default_factory=list)
    raw_prompt: object = None  # the prompt as written (string or messages): what reward functions receive
    extra: dict = field(default_factory=dict)


def _line_numbers(path) -> list[int]:
    """1-based line numbers of the non-blank lines, aligned with read_jsonl's records."""
    return [i for i, line in enumerate(read_utf8(path).splitlines(), 1) if line.strip()]


def _messages(value, where: str, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where}: '{name}' must be a string or a non-empty list of messages, "
                              f"got {type(value).__name__}")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataFormatError(f"{where}: {name}[{j}] must be {{\"role\": one of {list(ROLES)}, "
                                  f"\"content\": a string}}, got {str(m)[:80]}")
    return value


def to_turns(value, where: str, name: str, default_role: str, train: bool) -> list[Turn]:
    """A plain string (one message of `default_role`) or a list of messages -> turns; `train` marks the
    assistant turns for the loss."""
    if isinstance(value, str):
        return [Turn(default_role, value, train and default_role == "assistant")]
    return [Turn(m["role"], m["content"], train and m["role"] == "assistant") for m in _messages(value, where, name)]


def _require(rec: dict, keys, where: str, shape: str):
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {missing} of the {shape} shape the file's first record "
                              f"has; this record has {sorted(rec)}")


def read_chat(path) -> list[Example]:
    """SFT records -> examples whose assistant turns carry the loss."""
    path = require_path(path)
    records, lines = read_jsonl(path), _line_numbers(path)
    first = records[0]
    shape = "messages" if "messages" in first else "prompt-completion" if {"prompt", "completion"} <= set(first) else None
    if shape is None:
        raise unknown_format(path, "chat/instruction", CHAT_FORMATS, f"line {lines[0]} has fields {sorted(first)}")
    out = []
    for rec, line in zip(records, lines):
        where = f"{path}:{line}"
        if shape == "messages":
            _require(rec, ["messages"], where, shape)
            turns = to_turns(rec["messages"], where, "messages", "user", train=True)
        else:
            _require(rec, ["prompt", "completion"], where, shape)
            turns = (to_turns(rec["prompt"], where, "prompt", "user", train=False)
                     + to_turns(rec["completion"], where, "completion", "assistant", train=True))
        if not any(t.train for t in turns):
            raise DataFormatError(f"{where}: no assistant turn to train on")
        out.append(Example(where, turns))
    log.info("%s: chat data, %s shape, %d examples", path, shape, len(out))
    return out


def _split_implicit(chosen: list[Turn], rejected: list[Turn], where: str):
    """Conversations sharing leading messages -> (prompt, chosen rest, rejected rest), as TRL's extract_prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise DataFormatError(f"{where}: without 'prompt', 'chosen' and 'rejected' must be conversations that share "
                              "their leading (prompt) messages")
    return [replace(t, train=False) for t in chosen[:n]], chosen[n:], rejected[n:]  # no loss on the prompt


def read_preferences(path) -> list[Example]:
    """Preference records -> examples with the prompt's turns and the chosen / rejected responses."""
    path = require_path(path)
    records, lines = read_jsonl(path), _line_numbers(path)
    first = records[0]
    if not {"chosen", "rejected"} <= set(first):
        raise unknown_format(path, "preference", PREFERENCE_FORMATS, f"line {lines[0]} has fields {sorted(first)}")
    implicit = "prompt" not in first
    out = []
    for rec, line in zip(records, lines):
        where = f"{path}:{line}"
        _require(rec, ["chosen", "rejected"] if implicit else ["prompt", "chosen", "rejected"], where, "preference")
        chosen = to_turns(rec["chosen"], where, "chosen", "assistant", train=True)
        rejected = to_turns(rec["rejected"], where, "rejected", "assistant", train=True)
        if implicit:
            prompt, chosen, rejected = _split_implicit(chosen, rejected, where)
        else:
            prompt = to_turns(rec["prompt"], where, "prompt", "user", train=False)
        if not any(t.train for t in chosen) or not any(t.train for t in rejected):
            raise DataFormatError(f"{where}: 'chosen' and 'rejected' must each hold an assistant response")
        extra = {k: v for k, v in rec.items() if k not in ("prompt", "chosen", "rejected")}
        out.append(Example(where, prompt, chosen, rejected, rec.get("prompt"), extra))
    log.info("%s: preference data, %s, %d pairs", path, "implicit prompt" if implicit else "explicit prompt", len(out))
    return out


def read_prompts(path) -> list[Example]:
    """RL prompt records -> examples with the prompt's turns and the extra columns (every record must have the
    first record's columns, so that each reward function gets a full list)."""
    path = require_path(path)
    records, lines = read_jsonl(path), _line_numbers(path)
    if "prompt" not in records[0]:
        raise unknown_format(path, "prompt", PROMPT_FORMATS, f"line {lines[0]} has fields {sorted(records[0])}")
    columns = sorted(set(records[0]) - {"prompt"})
    out = []
    for rec, line in zip(records, lines):
        where = f"{path}:{line}"
        _require(rec, ["prompt", *columns], where, "prompts")
        turns = to_turns(rec["prompt"], where, "prompt", "user", train=False)
        out.append(Example(where, turns, raw_prompt=rec["prompt"], extra={k: rec[k] for k in columns}))
    log.info("%s: RL prompts, %d prompts, extra columns %s", path, len(out), columns)
    return out


def encode_example(tok, turns: list[Turn], where: str, max_len: int | None = None,
                   add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """encode_turns with the record's file:line on a character the tokenizer cannot encode; rows longer than
    max_len keep their first max_len tokens."""
    try:
        ids, mask = encode_turns(tok, turns, add_generation_prompt)
    except ValueError as e:
        raise DataFormatError(f"{where}: {e}") from None
    return (ids[:max_len], mask[:max_len]) if max_len else (ids, mask)


def train_val(path, val_path, reader, val_fraction: float, seed: int) -> tuple[list[Example], list[Example], dict]:
    """Examples of --data and --val-data, or a deterministic split of --data (exact duplicates across splits
    dropped); -> (train, val, sizes for metrics.json)."""
    examples = reader(path)
    if val_path:
        val = reader(val_path)
        return examples, val, {"train": len(examples), "val": len(val), "duplicates_dropped": 0}
    key = (lambda i: repr((examples[i].turns, examples[i].chosen, examples[i].rejected)))
    split = split_examples(len(examples), key, val_fraction, 0.0, seed)
    sizes = split.sizes()
    sizes.pop("test")
    return [examples[i] for i in split.train], [examples[i] for i in split.val], sizes


def add_data_args(parser, what: str) -> None:
    """--data / --val-data for an alignment recipe (skipped where the shared parser already has them)."""
    if "--data" not in parser._option_string_actions:
        parser.add_argument("--data", default=None, help=f"{what} (JSONL; see docs/data.md); default: the built-in "
                            "arithmetic task, written under --out/data and read back")
    if "--val-data" not in parser._option_string_actions:
        parser.add_argument("--val-data", default=None, help="held-out records in the same shape (default: a "
                            "deterministic split of --data by --seed, val_fraction)")


def data_path(value) -> Path | None:
    return None if value in (None, "") else Path(value)
