"""The checkable task, the rule labeller, the held-out split and the chat template's loss mask."""
import random
import re

import torch

from mmfm.align.chat import ASSISTANT, END, USER, build_tokenizer, collate_chat, decode_response, encode_chat
from mmfm.align.task import (Problem, corpus, is_heldout, judge, pair_kind, parse_answer, prefer, problems,
                             sample_problem, solve)


def test_worked_answers_are_right_and_bugs_are_the_classic_ones():
    assert solve(Problem(52, "-", 38)) == "12-8=4,5-3-1=1. Answer: 14"
    assert solve(Problem(52, "-", 38), bug=True) == "8-2=6,5-3=2. Answer: 26"  # smaller-from-larger
    assert solve(Problem(47, "+", 385)) == "7+5=12,4+8+1=13,0+3+1=4. Answer: 432"
    assert solve(Problem(47, "+", 385), bug=True).endswith("Answer: 322")  # carries forgotten
    assert solve(Problem(47, "+", 85), bug=True) == "7+5=12,4+8=12. Answer: 122"  # the last column in full
    rng = random.Random(0)
    for _ in range(3000):
        p = sample_problem(rng, heldout=rng.random() < 0.5)
        assert parse_answer(solve(p)) == p.answer


def test_labeller_order():
    p = Problem(52, "-", 38)
    concise, rambling = solve(p), "Hmm, let me think about this. " + solve(p) + " I hope this helps!"
    wrong, question = solve(p, bug=True), "Do you want the steps for 52-38?"
    ranked = sorted([question, wrong, rambling, concise], key=lambda r: judge(p, r), reverse=True)
    assert ranked == [concise, rambling, wrong, question]
    assert prefer(p, concise, rambling) == 1 and prefer(p, wrong, concise) == -1
    assert prefer(p, wrong, question) == 1 and prefer(p, wrong, wrong + " ok") == 0  # no preference
    assert pair_kind(p, concise, wrong) == "correct>wrong" and pair_kind(p, wrong, question) == "answer>none"
    assert pair_kind(p, concise, rambling) == "concise>rambling"


def test_heldout_problems_never_in_training_text():
    assert all(is_heldout(p) for p in problems(200, seed=5, heldout=True))
    assert not any(is_heldout(p) for p in problems(200, seed=5))
    asked = [re.search(r"(\d+)([+-])(\d+)", line).groups() for line in "\n".join(corpus(2000, seed=0)).splitlines()
             if line.startswith("Q: ")]
    assert len(asked) == 2000
    assert not any(is_heldout(Problem(int(a), op, int(b))) for a, op, b in asked)
    held_share = sum(is_heldout(sample_problem(random.Random(i), heldout=i % 8 == 0)) for i in range(800)) / 800
    assert held_share == 0.125


def test_template_masks_only_the_response():
    tok = build_tokenizer()
    ids, mask = encode_chat(tok, "What is 1+2?", "1+2=3. Answer: 3")
    text = tok.decode(ids)
    assert text == f"{USER}What is 1+2?{END}{ASSISTANT}1+2=3. Answer: 3{END}"
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "1+2=3. Answer: 3" + END
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == f"{USER}What is 1+2?{END}{ASSISTANT}"
    assert all(tok.token_to_id(s) is not None for s in (USER, END, ASSISTANT))
    batch = collate_chat([(ids, mask), encode_chat(tok, "Hi", "Do you?")], tok.pad_id)
    assert batch["ids"].shape == batch["loss_mask"].shape == (2, len(ids))
    assert batch["loss_mask"][1].sum() == len("Do you?") + 1 and not batch["loss_mask"][1, -1]
    assert decode_response(tok, tok.encode("12. Answer: 3") + [tok.token_to_id(END)] + [5, 6]) == "12. Answer: 3"
    assert torch.equal(batch["mask"][0], torch.ones(len(ids), dtype=torch.bool))


def test_confirmation_set_is_heldout_and_disjoint_from_every_evaluated_prompt():
    from mmfm.align.confirm import _accuracy, confirm_problems
    from mmfm.align.splits import heldout_problems
    from mmfm.align.task import is_heldout, solve

    probs = confirm_problems()
    used = set(heldout_problems("eval", 400)) | set(heldout_problems("rm_eval", 512))
    assert len(probs) == len(set(probs)) > 500
    assert all(is_heldout(p) for p in probs) and not used & set(probs)
    right = [solve(p) for p in probs[:4]]
    wrong = ["Answer: -1"] * 4
    assert _accuracy(probs[:4], right) == 1.0 and _accuracy(probs[:4], wrong) == 0.0
    assert _accuracy(probs[:4], right[:2] + wrong[2:], keep=lambda p: p in probs[:2]) == 1.0


def test_pairs_leave_out_samples_with_special_token_text():
    """A barely trained model samples <|user|> mid-answer; such a sample, written as JSONL text, would read back
    as plain characters (which the char vocabulary cannot even encode), so the built-in pairs leave it out."""
    from mmfm.align.builtin import writable

    tok = build_tokenizer()
    assert writable(tok, ["12. Answer: 3", f"1{USER}2", "12. Answer: 3", "x<|endoftext|>"]) == ["12. Answer: 3"]
