"""Prompting helpers: few-shot prompts, chain-of-thought template, answer extraction."""
from mmfm.prompting import (COT_TRIGGER, chain_of_thought_prompt, extract_answer, few_shot_prompt,
                            truncate_at_stop)


def test_few_shot_prompt_layout():
    p = few_shot_prompt([("2+2", "4"), ("3+5", "8")], "7+1", instruction="Add the numbers.")
    assert p == "Add the numbers.\n\nQ: 2+2\nA: 4\n\nQ: 3+5\nA: 8\n\nQ: 7+1\nA:"


def test_chain_of_thought_prompt():
    zero = chain_of_thought_prompt("How many legs do 2 cats have?")
    assert zero == f"Q: How many legs do 2 cats have?\nA: {COT_TRIGGER}"
    few = chain_of_thought_prompt("1+1?", examples=[("2+3?", "2 plus 3 is 5.", "5")])
    assert few.startswith("Q: 2+3?\nA: 2 plus 3 is 5. The answer is 5.\n\nQ: 1+1?\nA: Let's think")


def test_extract_answer():
    assert extract_answer("3 - 1 = 2. The answer is 2.") == "2"
    assert extract_answer("so the final answer is: Paris. Done") == "Paris"
    assert extract_answer("reasoning...\nAnswer: 42") == "42"
    assert extract_answer("work\n#### 1,234") == "1,234"
    assert extract_answer("The answer is 1,234 apples.", numeric=True) == "1234"
    assert extract_answer("we get 7 then 9") == "9"
    assert extract_answer("no idea") is None


def test_truncate_at_stop():
    assert truncate_at_stop(" 8\n\nQ: next", ["\n\n", "Q:"]) == " 8"
    assert truncate_at_stop("abc", ["x"]) == "abc"
