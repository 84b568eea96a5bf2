"""Reward / value heads, the KV-cache sampler, and one tiny step of every alignment stage."""
import json

import pytest
import torch

import mmfm
from mmfm.align.chat import build_tokenizer, encode_chat, encode_prompt, pad_right, stop_ids
from mmfm.align.heads import PolicyWithValue, RewardModel, logits_and_hidden
from mmfm.align.ppo import PPOConfig, PPOTask, Prompts
from mmfm.align.rollout import sample
from mmfm.align.splits import heldout_problems, train_problems
from mmfm.align.task import QUESTIONS, solve

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=256, pos="rope")


def tiny_gpt(tok):
    model = mmfm.build_model("gpt-test", vocab_size=tok.vocab_size, **TINY)
    model.tokenizer = tok
    return model


def test_heads_shapes_and_padding():
    tok = build_tokenizer()
    gpt = tiny_gpt(tok).eval()
    rows = [encode_chat(tok, "What is 12+3?", "2+3=5,1+0=1. Answer: 15")[0], encode_chat(tok, "Hi", "Do you?")[0]]
    ids, mask = pad_right(rows, tok.pad_id)
    rm = RewardModel(gpt).eval()
    r = rm(ids, mask)
    assert r.shape == (2,)
    assert torch.allclose(r[1], rm(*pad_right([rows[1]], tok.pad_id))[0], atol=1e-5)  # padding does not matter
    logits, h = logits_and_hidden(gpt, ids)
    assert torch.equal(logits, gpt(ids)) and h.shape == (2, ids.shape[1], 32)
    assert not gpt.transformer._forward_hooks  # the hook is gone after the call
    logits, values = PolicyWithValue(gpt)(ids)
    assert logits.shape == (*ids.shape, tok.vocab_size) and values.shape == ids.shape


def test_reward_model_save_load(tmp_path):
    tok = build_tokenizer()
    rm = RewardModel(tiny_gpt(tok)).eval()
    rm.save_pretrained(tmp_path / "rm")
    again = RewardModel.from_pretrained(tmp_path / "rm").eval()
    ids, mask = pad_right([encode_prompt(tok, "What is 1+2?")], tok.pad_id)
    assert torch.equal(rm(ids, mask), again(ids, mask)) and again.gpt.tokenizer is not None


def test_kv_cache_sampler_matches_full_forward():
    """Greedy sampling of two prompts of different lengths equals argmax decoding without a cache."""
    tok = build_tokenizer()
    gpt = tiny_gpt(tok).eval()
    prompts = [encode_prompt(tok, "What is 123+45?"), encode_prompt(tok, "7+8=?")]
    out = sample(gpt, prompts, 6, stop=[], pad=tok.pad_id, temperature=0)
    for p, o in zip(prompts, out):
        seq = list(p)
        for _ in range(6):
            seq.append(int(gpt(torch.tensor([seq]))[0, -1].argmax()))
        assert o == seq[len(p):]


def synthetic_pairs(n):
    """Hand-made pairs (correct beats buggy or a question), standing in for sampled ones."""
    out = []
    for i, p in enumerate(train_problems("preference", n)):
        rejected = solve(p, bug=True) if i % 2 else QUESTIONS[0].format(q=p.text)
        out.append({"a": p.a, "op": p.op, "b": p.b, "prompt": f"What is {p.text}?", "chosen": solve(p), "rejected": rejected})
    return out


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Pretrain and SFT for a couple of steps (recipes end to end), plus a hand-made pairs file."""
    import align_pretrain
    import sft

    root = tmp_path_factory.mktemp("align")
    small = [f"{k}={v}" for k, v in TINY.items()]
    align_pretrain.main(["--out", str(root / "base"), "--max-steps", "2", "n_items=64", "batch_size=4", "n_eval=4", *small])
    sft.main(["--init", str(root / "base" / "model"), "--out", str(root / "sft"), "--max-steps", "2", "n_train=8",
              "batch_size=4", "n_eval=4"])
    write_jsonl(root / "prefs.jsonl", synthetic_pairs(16))
    write_jsonl(root / "prefs_heldout.jsonl", synthetic_pairs(24)[16:])
    return root


@pytest.fixture(autouse=True, scope="module")
def _recipes_on_path():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    yield
    sys.path.pop(0)


def test_pretrain_and_sft_write_models(tiny_runs):
    for stage in ("base", "sft"):
        metrics = json.loads((tiny_runs / stage / "metrics.json").read_text())
        assert 0 <= metrics["heldout/accuracy"] <= 1 and metrics["steps"] == 2
        assert mmfm.build_model(tiny_runs / stage / "model").tokenizer is not None


def test_reward_model_and_dpo_steps(tiny_runs):
    import dpo
    import reward_model

    pairs = ["--data", str(tiny_runs / "prefs.jsonl"), "--val-data", str(tiny_runs / "prefs_heldout.jsonl")]
    rm = reward_model.main(["--sft", str(tiny_runs / "sft" / "model"), *pairs,
                            "--out", str(tiny_runs / "rm"), "--max-steps", "2", "batch_size=4"])
    assert 0 <= rm["heldout"]["acc"] <= 1 and rm["heldout"]["n"] == 8
    assert sum(v for k, v in rm["heldout"].items() if k.startswith("n_")) == 8  # by the labeller's reason
    for loss in ("dpo", "ipo"):
        out = dpo.main(["--init", str(tiny_runs / "sft" / "model"), *pairs,
                        "--out", str(tiny_runs / loss), "--max-steps", "2", "batch_size=4", "n_eval=4", f"loss={loss}"])
        assert out["kl_to_sft"] == out["kl_to_sft"] and out["pairs"] == 16  # the task's pairs: task metrics too
        assert 0 <= out["heldout_pairs"]["reward_acc"] <= 1 and 0 <= out["heldout"]["accuracy"] <= 1


def test_dpo_nll_term_adds_chosen_token_nll(tmp_path):
    """RPO: loss = DPO loss + alpha * per-token NLL of the chosen response; at policy == reference DPO is log 2."""
    import math

    from mmfm.align.data import Pairs, pair_collate
    from mmfm.align.rollout import response_logprobs
    from mmfm.align.tasks import DPOTask
    from mmfm.losses.preference import masked_mean, token_logprobs

    from mmfm.align.formats import read_preferences

    tok = build_tokenizer()
    torch.manual_seed(0)
    policy, pairs = tiny_gpt(tok).eval(), synthetic_pairs(4)
    prompts = [q["prompt"] for q in pairs]
    ref = torch.stack([response_logprobs(policy, tok, prompts, [q[k] for q in pairs]) for k in ("chosen", "rejected")], 1)
    examples = read_preferences(write_jsonl(tmp_path / "prefs.jsonl", pairs))
    batch = pair_collate(tok.pad_id)([Pairs(tok, examples)[i] for i in range(4)])
    c = batch["chosen"]
    with torch.no_grad():
        nll = -masked_mean(token_logprobs(policy(c["ids"]), c["ids"]), c["loss_mask"][:, 1:])
        plain = DPOTask(policy, ref).training_step(batch, 0)
        rpo = DPOTask(policy, ref, nll_alpha=0.5).training_step(batch, 0)
    assert plain.item() == pytest.approx(math.log(2), abs=1e-5)
    assert rpo.item() == pytest.approx(math.log(2) + 0.5 * nll.item(), abs=1e-5)


def test_ppo_step_moves_policy_and_reports_kl(tmp_path):
    """A PPO step under Lightning (manual optimization): the first rollout's KL is 0 (policy == reference), the
    updates move the policy, and the next rollout's KL is not 0."""
    import lightning as L

    from mmfm.align.formats import read_prompts
    from mmfm.align.rewards import RewardTerm, exact_match

    tok = build_tokenizer()
    torch.manual_seed(0)
    sft = tiny_gpt(tok)
    policy, reference = PolicyWithValue(sft), tiny_gpt(tok)
    reference.load_state_dict(sft.state_dict())
    before = [p.detach().clone() for p in policy.gpt.parameters()]
    cfg = PPOConfig(max_new=8, prompts_per_step=8, minibatch=4, lr=1e-3, temperature=0.7)
    terms = [RewardTerm("rm", 1.0, model=RewardModel(tiny_gpt(tok))), RewardTerm("exact_match", 0.5, fn=exact_match)]
    task = PPOTask(policy, reference, terms, tok, cfg)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {p.text}?", "answer": p.answer}
                                              for p in heldout_problems("eval", 8)])
    prompts = Prompts(tok, read_prompts(path))
    stats = task.rollout(prompts.rows)["stats"]
    assert abs(float(stats["kl"])) < 1e-4 and {"reward", "reward_rm", "reward_exact_match"} <= set(stats)
    assert task.score_norm[0, 1] > 0  # the reward model's first-batch standardisation is recorded (checkpointed)
    loader = torch.utils.data.DataLoader(prompts, batch_size=8, collate_fn=list)
    L.Trainer(max_steps=2 * cfg.updates_per_step(), accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False).fit(task, loader)
    assert [h["step"] for h in task.history] == [0, 1] and task.history[1]["kl"] != 0.0
    assert {"pg_loss", "vf_loss", "clipfrac"} <= set(task.history[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.gpt.parameters()))


def test_ppo_recipe_and_report(tiny_runs, tmp_path):
    import ppo

    from mmfm.align.heads import RewardModel
    from mmfm.align.report import main as report

    RewardModel(mmfm.build_model(tiny_runs / "sft" / "model")).save_pretrained(tiny_runs / "rm_init")
    out = ppo.main(["--init", str(tiny_runs / "sft" / "model"), f"reward={tiny_runs / 'rm_init'}",
                    "--out", str(tiny_runs / "ppo"), "--max-steps", "2", "prompts_per_step=8", "minibatch=4",
                    "max_new=8", "n_eval=4"])
    history = json.loads((tiny_runs / "ppo" / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1] and all("kl" in h and "reward" in h for h in history)
    assert "kl_to_sft" in out
    stages = report(str(tiny_runs), str(tmp_path))
    assert {"base", "sft", "ppo"} <= set(stages)
    assert (tmp_path / "align_accuracy.png").stat().st_size > 1000 and (tmp_path / "align_ppo.png").is_file()


def test_ppo_clips_gradients_under_mixed_precision(tmp_path):
    """Lightning's mixed-precision plugins refuse to clip a fused optimizer's gradients (found on CUDA with
    bf16-mixed): PPO's optimizer must not be fused. CPU bf16-mixed goes through the same plugin."""
    import lightning as L

    from mmfm.align.formats import read_prompts
    from mmfm.align.rewards import RewardTerm, format_reward

    tok = build_tokenizer()
    policy, reference = PolicyWithValue(tiny_gpt(tok)), tiny_gpt(tok)
    cfg = PPOConfig(max_new=4, prompts_per_step=4, minibatch=4, epochs=1)
    task = PPOTask(policy, reference, [RewardTerm("format", 1.0, fn=format_reward)], tok, cfg)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i}+1?"} for i in range(4)])
    loader = torch.utils.data.DataLoader(Prompts(tok, read_prompts(path)), batch_size=4, collate_fn=list)
    L.Trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
              enable_progress_bar=False).fit(task, loader)
    assert len(task.history) == 1 and task.history[0]["pg_loss"] == task.history[0]["pg_loss"]
