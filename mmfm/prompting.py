"""Prompting helpers: few-shot prompts, a chain-of-thought template and answer extraction.

    prompt = few_shot_prompt([("2+2", "4"), ("3+5", "8")], "7+1")   # 'Q: 2+2\\nA: 4\\n\\nQ: 3+5 ...\\nQ: 7+1\\nA:'
    out = model.generate(prompt, 50, temperature=0, stop_strings=["\\n\\n"])
    answer = truncate_at_stop(out.texts()[0], ["\\n\\n"]).strip()

    cot = chain_of_thought_prompt("If I have 3 apples and eat one, how many are left?")
    extract_answer("... so 3 - 1 = 2. The answer is 2.")   # '2'
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

COT_TRIGGER = "Let's think step by step."
_ANSWER_PATTERNS = (
    re.compile(r"(?:the )?(?:final )?answer is[:\s]*\$?([^\n]+?)\s*(?:\.\s|\.$|$|\n)", re.IGNORECASE),
    re.compile(r"^\s*answer\s*:\s*([^\n]+?)\s*\.?\s*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"####\s*([^\n]+?)\s*$", re.MULTILINE),
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def few_shot_prompt(examples: Iterable[tuple[str, str]], query: str, instruction: str = "",
                    input_prefix: str = "Q: ", output_prefix: str = "A:", sep: str = "\n\n") -> str:
    """`instruction`, then each (input, output) example, then the query with an open answer slot."""
    shots = [f"{input_prefix}{x}\n{output_prefix} {y}" for x, y in examples]
    parts = ([instruction] if instruction else []) + shots + [f"{input_prefix}{query}\n{output_prefix}"]
    return sep.join(parts)


def chain_of_thought_prompt(question: str, examples: Sequence[tuple[str, str, str]] = (),
                            trigger: str = COT_TRIGGER, input_prefix: str = "Q: ", output_prefix: str = "A:",
                            sep: str = "\n\n") -> str:
    """Zero-shot CoT (Kojima et al.): 'Q: ...\\nA: Let's think step by step.'; with examples of
    (question, reasoning, answer), few-shot CoT whose shots end in 'The answer is X.'"""
    shots = [f"{input_prefix}{q}\n{output_prefix} {r.strip()} The answer is {a}." for q, r, a in examples]
    return sep.join(shots + [f"{input_prefix}{question}\n{output_prefix} {trigger}".rstrip()])


def truncate_at_stop(text: str, stop_strings: Iterable[str]) -> str:
    """The text before the first occurrence of any stop string."""
    cut = min((i for s in stop_strings if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def extract_answer(text: str, numeric: bool = False) -> str | None:
    """The answer stated in a completion: 'The answer is X', 'Answer: X' or '#### X' (first match);
    else, with numeric=True or when nothing matched, the last number in the text; None if none."""
    for pattern in _ANSWER_PATTERNS:
        m = pattern.search(text)
        if m:
            answer = m.group(1).strip().rstrip(".").strip()
            if numeric:
                nums = _NUMBER.findall(answer)
                return nums[-1].replace(",", "") if nums else None
            return answer
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None
