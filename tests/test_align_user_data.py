"""The alignment recipes on a user's own JSONL (TRL's shapes), rewards as functions, and the bad-input errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmfm
from mmfm.align.chat import ASSISTANT, END, USER, build_tokenizer
from mmfm.align.data import Chats, Pairs
from mmfm.align.formats import read_chat, read_preferences, read_prompts
from mmfm.config import ConfigError
from mmfm.data.formats import DataFormatError

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=128, pos="rope")
REWARDS = '''
def exact_match(prompts, completions, answer, **columns):
    return [float(c.strip() == str(a)) for c, a in zip(completions, answer)]

def too_few(prompts, completions, **columns):
    return [1.0]

def not_numbers(prompts, completions, **columns):
    return ["good"] * len(completions)
'''


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CHATS = [{"messages": msgs(("system", "Be brief."), ("user", "What is 2+3?"), ("assistant", "5"), ("user", "And 4+4?"),
                           ("assistant", "8"))}] + [{"messages": msgs(("user", f"Hi {i}"), ("assistant", f"Hello {i}"))}
                                                   for i in range(7)]
PREFS = [{"prompt": f"What is {i}+1?", "chosen": f"Answer: {i + 1}", "rejected": "No idea"} for i in range(8)]
PROMPTS = [{"prompt": f"What is {i}+2?", "answer": str(i + 2), "level": i % 3} for i in range(8)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny chat-capable GPT folder (the task's char tokenizer with the chat tokens)."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = mmfm.build_model("gpt-test", vocab_size=tok.vocab_size, **TINY)
    model.tokenizer = tok
    return model.save_pretrained(tmp_path_factory.mktemp("base") / "model")


def _recipe(name):
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _masked(tok, ids, mask, value):
    """The text of the tokens whose mask equals `value`, split at the role tokens."""
    return tok.decode([i for i, m in zip(ids, mask) if m == value])


def test_chat_shapes_put_the_loss_on_assistant_turns_only(tmp_path):
    tok = build_tokenizer()
    records = [CHATS[0], {"prompt": "What is 2+3?", "completion": "5"},
               {"prompt": msgs(("system", "Be brief."), ("user", "Hi")), "completion": msgs(("assistant", "Hello"))}]
    rows = []
    for i, rec in enumerate(records):
        rows += Chats(tok, read_chat(write_jsonl(tmp_path / f"c{i}.jsonl", [rec]))).rows
    (ids0, m0), (ids1, m1), (ids2, m2) = rows
    assert _masked(tok, ids0, m0, 1) == f"5{END}8{END}"  # both assistant turns, each with its <|end|>, nothing else
    assert _masked(tok, ids0, m0, 0) == f"{USER}Be brief.\n\nWhat is 2+3?{END}{ASSISTANT}{USER}And 4+4?{END}{ASSISTANT}"
    assert _masked(tok, ids1, m1, 1) == f"5{END}" and tok.decode(ids1) == f"{USER}What is 2+3?{END}{ASSISTANT}5{END}"
    assert _masked(tok, ids2, m2, 1) == f"Hello{END}" and _masked(tok, ids2, m2, 0).startswith(f"{USER}Be brief.")


def test_user_text_never_becomes_a_chat_token(tmp_path):
    """A user typing '<|assistant|>' does not open an assistant turn: the char vocabulary has no '<' or '|', so
    the record fails with its file:line instead of being trained as a fake turn."""
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Hi", "completion": "ok"},
                                              {"prompt": "Hi <|assistant|> yes", "completion": "ok"}])
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: character '<' is not in"):
        Chats(build_tokenizer(), read_chat(path))


def test_preference_shapes_plain_conversational_and_implicit_prompt_agree(tmp_path):
    tok = build_tokenizer()
    plain = {"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}
    conv = {"prompt": msgs(("user", "What is 2+3?")), "chosen": msgs(("assistant", "5")),
            "rejected": msgs(("assistant", "6"))}
    implicit = {"chosen": msgs(("user", "What is 2+3?"), ("assistant", "5")),
                "rejected": msgs(("user", "What is 2+3?"), ("assistant", "6"))}
    rows = [Pairs(tok, read_preferences(write_jsonl(tmp_path / f"p{i}.jsonl", [r]))).rows[0]
            for i, r in enumerate((plain, conv, implicit))]
    assert rows[0] == rows[1] == rows[2]
    (c_ids, c_mask), (r_ids, r_mask) = rows[0]
    assert _masked(tok, c_ids, c_mask, 1) == f"5{END}" and _masked(tok, r_ids, r_mask, 1) == f"6{END}"
    multi = {"chosen": msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "2+3?"), ("assistant", "5")),
             "rejected": msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "2+3?"), ("assistant", "6"))}
    (c_ids, c_mask), _ = Pairs(tok, read_preferences(write_jsonl(tmp_path / "m.jsonl", [multi]))).rows[0]
    assert _masked(tok, c_ids, c_mask, 1) == f"5{END}"  # the shared earlier assistant turn is prompt: no loss


def test_prompts_keep_extra_columns_for_the_reward(tmp_path):
    examples = read_prompts(write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2]))
    assert examples[1].extra == {"answer": "3", "level": 1} and examples[1].raw_prompt == "What is 1+2?"
    with pytest.raises(DataFormatError, match=r"p2\.jsonl:2: missing field\(s\) \['level'\]"):
        read_prompts(write_jsonl(tmp_path / "p2.jsonl", [PROMPTS[0], {"prompt": "x", "answer": "1"}]))


def test_bad_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": ' + json.dumps(msgs(("user", "a"), ("assistant", "b"))) + '}\n\n{"messages": [\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: not valid JSON"):
        read_chat(bad)
    with pytest.raises(DataFormatError, match=r"m\.jsonl:2: missing field\(s\) \['completion'\]"):
        read_chat(write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a"}]))
    with pytest.raises(DataFormatError, match=r"r\.jsonl:1: messages\[1\] must be"):
        read_chat(write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "bot"}]}]))
    with pytest.raises(DataFormatError, match=r"n\.jsonl:1: no assistant turn"):
        read_chat(write_jsonl(tmp_path / "n.jsonl", [{"messages": msgs(("user", "a"))}]))
    with pytest.raises(DataFormatError, match=r"(?s)not a chat/instruction layout.*conversational.*prompt-completion") as e:
        read_chat(write_jsonl(tmp_path / "u.jsonl", [{"text": "hello"}]))
    assert '{"prompt": "What is 2+3?", "completion": "5"}' in str(e.value)  # an example of each accepted shape
    with pytest.raises(DataFormatError, match=r"(?s)not a preference layout.*implicit-prompt"):
        read_preferences(write_jsonl(tmp_path / "u2.jsonl", [{"prompt": "a", "completion": "b"}]))
    with pytest.raises(DataFormatError, match=r"not a prompt layout"):
        read_prompts(write_jsonl(tmp_path / "u3.jsonl", [{"question": "a"}]))
    with pytest.raises(FileNotFoundError, match="--data .*nothere.jsonl"):
        read_chat(tmp_path / "nothere.jsonl")


def test_reward_specs_and_return_values(tmp_path, monkeypatch):
    from mmfm.align.rewards import call_reward, exact_match, format_reward, load_rewards

    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)  # found on the working directory
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    terms = load_rewards("my_rewards:exact_match,mmfm.align.rewards:format_reward", [1, 0.5])
    assert [(t.name, t.weight) for t in terms] == [("exact_match", 1.0), ("format_reward", 0.5)]
    assert call_reward(terms[0], ["p", "q"], ["3 ", "4"], {"answer": [3, 5]}).tolist() == [1.0, 0.0]
    assert exact_match([], ["1+2=3. Answer: 3", "Answer: 03", [{"role": "assistant", "content": "Answer: 4"}]],
                       answer=[3, 3, 5]) == [1.0, 1.0, 0.0]
    assert format_reward([], ["x. Answer: 12", "Answer: 1 more"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="no module 'nope' on the working directory"):
        load_rewards("nope:f")
    with pytest.raises(ConfigError, match="has no function 'missing'.*'exact_match'"):
        load_rewards("my_rewards:missing")
    with pytest.raises(ConfigError, match="no such reward-model folder, and not module:function"):
        load_rewards("runs/not_a_folder")
    with pytest.raises(ConfigError, match=r"reward_weights=\[1\]: expected a list of 2"):
        load_rewards("my_rewards:exact_match,my_rewards:too_few", [1])
    with pytest.raises(ValueError, match="too_few returned 1 values for 2 completions"):
        call_reward(load_rewards("my_rewards:too_few")[0], ["a", "b"], ["x", "y"], {})
    with pytest.raises(TypeError, match="not_numbers must return finite floats, got 'good'"):
        call_reward(load_rewards("my_rewards:not_numbers")[0], ["a"], ["x"], {})


PPO_ARGS = ["--max-steps", "2", "prompts_per_step=4", "minibatch=2", "max_new=6", "--device", "cpu"]


def test_sft_dpo_ppo_chain_on_user_files(tmp_path, base, monkeypatch):
    """The issue's chain: sft.py --data chats.jsonl, then dpo.py --data prefs.jsonl, then
    ppo.py --data prompts.jsonl reward=my_rewards:exact_match (a module the user put on PYTHONPATH)."""
    chats, prefs = write_jsonl(tmp_path / "chats.jsonl", CHATS), write_jsonl(tmp_path / "prefs.jsonl", PREFS)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    sft = _recipe("sft").main(["--init", str(base), "--data", str(chats), "--out", str(tmp_path / "sft"),
                               "--max-steps", "2", "batch_size=4", "val_fraction=0.25"])
    assert sft["steps"] == 2 and sft["data"]["val"] == 2 and sft["val/loss"] > 0 and "heldout" not in sft
    assert (tmp_path / "sft" / "loss.png").is_file()
    dpo = _recipe("dpo").main(["--init", str(tmp_path / "sft" / "model"), "--data", str(prefs),
                               "--out", str(tmp_path / "dpo"), "--max-steps", "2", "batch_size=4"])
    assert dpo["pairs"] == 7 and dpo["heldout_pairs"]["n"] == 1 and "heldout" not in dpo
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "my_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path / "rewards"))  # what PYTHONPATH does (the CLI form: the slow test)
    _recipe("ppo").main(["--init", str(tmp_path / "dpo" / "model"), "--data", str(prompts),
                         "reward=my_rewards:exact_match", "--out", str(tmp_path / "ppo"), *PPO_ARGS])
    _check_ppo_run(tmp_path / "ppo")


def _check_ppo_run(out):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 <= metrics["heldout_reward/exact_match"] <= 1
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1] and all("reward_exact_match" in h for h in history)
    assert (out / "loss.png").is_file() and (out / "ppo.png").is_file() and (out / "model" / "config.json").is_file()


@pytest.mark.slow
def test_ppo_command_line_finds_the_reward_module_on_pythonpath(tmp_path, base):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "my_rewards.py").write_text(REWARDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'rewards'}"}
    cmd = [sys.executable, str(ROOT / "recipes" / "ppo.py"), "--init", str(base), "--data", str(prompts),
           "reward=my_rewards:exact_match", "--out", str(tmp_path / "ppo"), *PPO_ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_ppo_run(tmp_path / "ppo")


def test_flags_that_would_be_ignored_are_errors(tmp_path, base):
    chats = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    with pytest.raises(ConfigError, match="n_train only shape the built-in task's data"):
        _recipe("sft").main(["--init", str(base), "--data", str(chats), "--out", str(tmp_path / "x"), "n_train=8"])
    with pytest.raises(ConfigError, match="val_fraction splits --data when no --val-data is given"):
        _recipe("sft").main(["--init", str(base), "--data", str(chats), "--val-data", str(chats), "--out",
                             str(tmp_path / "x"), "val_fraction=0.2"])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    with pytest.raises(ConfigError, match="reward= is required with --data"):
        _recipe("ppo").main(["--init", str(base), "--data", str(prompts), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing half-written


def _count_steps(monkeypatch, cls):
    calls = []
    original = cls.training_step
    monkeypatch.setattr(cls, "training_step", lambda self, *a: (calls.append(1), original(self, *a))[1])
    return calls


@pytest.mark.parametrize("stage", ["sft", "dpo", "reward_model", "ppo"])
def test_resume_continues_the_global_step(tmp_path, base, monkeypatch, stage):
    """A run stopped after 2 steps and resumed with --max-steps 4 runs only the 2 remaining steps and ends at
    step 4; for SFT (one batch holding all the data) it ends with the weights of an uninterrupted 4-step run."""
    from mmfm.align.ppo import PPOTask
    from mmfm.align.tasks import DPOTask, LMTask, RewardTask

    data = {"sft": CHATS, "dpo": PREFS, "reward_model": PREFS, "ppo": PROMPTS}[stage]
    path = write_jsonl(tmp_path / "data.jsonl", data)
    init = "--sft" if stage == "reward_model" else "--init"
    extra = {"ppo": ["reward=mmfm.align.rewards:format_reward", "prompts_per_step=8", "minibatch=8", "max_new=4",
                     "epochs=1"]}.get(stage, ["batch_size=8"])
    recipe = _recipe(stage)

    def run(out, steps, *more):
        return recipe.main([init, str(base), "--data", str(path), "--val-data", str(path), "--out", str(tmp_path / out),
                            "--max-steps", str(steps), "--ckpt-every", "1", *extra, *more])

    task = {"sft": LMTask, "dpo": DPOTask, "reward_model": RewardTask, "ppo": PPOTask}[stage]
    run("part", 2)
    calls = _count_steps(monkeypatch, task)
    resumed = run("resumed", 4, "--resume", str(tmp_path / "part"))
    assert len(calls) == 2 and resumed["steps"] == 4
    if stage == "sft":
        run("whole", 4)
        whole = mmfm.build_model(tmp_path / "whole" / "model").state_dict()
        again = mmfm.build_model(tmp_path / "resumed" / "model").state_dict()
        for k in whole:
            assert torch.allclose(whole[k], again[k], atol=1e-5), k


@pytest.mark.slow
def test_sft_ddp_two_processes_rank_zero_writes(tmp_path, base):
    chats = write_jsonl(tmp_path / "chats.jsonl", CHATS + [{"messages": msgs(("user", f"Q{i}"), ("assistant", f"A{i}"))} for i in range(8)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes" / "sft.py"), "--init", str(base), "--data", str(chats), "--out",
           str(tmp_path / "ddp"), "--max-steps", "3", "--device", "cpu", "--devices", "2", "--strategy", "ddp",
           "batch_size=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["val/loss"] > 0
    assert (proc.stdout + proc.stderr).count("final metrics:") == 1  # rank 1 returned after fit, wrote nothing
