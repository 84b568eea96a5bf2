"""Group-relative RL: advantages and every loss variant against hand-computed values and against TRL's own GRPO and
RLOO loss code (called on a minimal stand-in for the trainer whose model returns the log-probs we chose), the
group sampler (finished sequences skipped, same completions as the plain loop), and the task / recipe on a tiny
model with a user's JSONL prompts and reward function."""
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mmfm
from mmfm.align.chat import build_tokenizer, encode_prompt, stop_ids
from mmfm.align.rollout import sample
from mmfm.align.sampling import sample_groups
from mmfm.losses.policy import GROUP_LOSSES, group_advantages, group_policy_loss, k3_kl, sampling_logprobs
from test_preference_losses import Accelerator  # the one-process stand-in for TRL's accelerator

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=128, pos="rope")


def tiny_gpt(tok):
    model = mmfm.build_model("gpt-test", vocab_size=tok.vocab_size, **TINY)
    model.tokenizer = tok
    return model


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    std = math.sqrt(0.75 ** 2 + 3 * 0.25 ** 2) / math.sqrt(3)  # unbiased std of [1, 0, 0, 0]
    want = [0.75 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 3 + [0.0] * 4
    assert group_advantages(r, 4).tolist() == pytest.approx(want, abs=1e-6)
    assert group_advantages(r, 4, scale="none").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    # leave-one-out: 1 - 0 = 1; 0 - 1/3 for the others
    assert group_advantages(r, 4, "leave_one_out", "none").tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0])
    batch = group_advantages(r, 4, scale="batch")
    assert batch.tolist() == pytest.approx([0.75 / (r.std().item() + 1e-4), -0.25 / (r.std().item() + 1e-4)] +
                                           [-0.25 / (r.std().item() + 1e-4)] * 2 + [0] * 4, abs=1e-6)
    loo = torch.tensor([1, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0])
    assert group_advantages(r, 4, "leave_one_out", "batch").tolist() == pytest.approx(
        ((loo - loo.mean()) / (loo.std() + 1e-4)).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="group=3"):
        group_advantages(r, 3)


def hand_batch():
    """Two sequences: lengths 2 and 1 (one padding column); ratios e^0.5 / 1 / e^-0.5; advantages +1, -2."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
    old = torch.tensor([[-1.5, -2.0], [0.0, -9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    return logp, old, torch.tensor([1.0, -2.0]), mask


def test_group_losses_by_hand():
    logp, old, adv, mask = hand_batch()
    e = math.exp
    # per token: seq 0: min(e^.5, 1.2) * 1 -> -1.2, min(1, 1) -> -1; seq 1: ratio e^-.5 = 0.607 < 0.8: -min(-1.213, -1.6) = 1.6
    tok = [[-1.2, -1.0], [1.6, 0.0]]
    want = {"grpo": ((-1.2 - 1.0) / 2 + 1.6) / 2, "bnpo": (-1.2 - 1.0 + 1.6) / 3, "dapo": (-1.2 - 1.0 + 1.6) / 3,
            "dr_grpo": (-1.2 - 1.0 + 1.6) / (2 * 4)}
    for name, value in want.items():
        loss, stats = group_policy_loss(name, logp, old, adv, mask, 0.2, 0.2, max_len=4)
        assert loss.item() == pytest.approx(value, abs=1e-6), name
    assert stats["clip_high"].item() == pytest.approx(1 / 3) and stats["clip_low"].item() == pytest.approx(1 / 3)
    # clip-higher: eps_high 0.28 lets the first token reach 1.28 (e^0.5 = 1.6487 still clipped)
    loss, _ = group_policy_loss("dapo", logp, old, adv, mask, 0.2, 0.28, n_tokens=6.0)
    assert loss.item() == pytest.approx((-1.28 - 1.0 + 1.6) / 6, abs=1e-6)
    # rloo: one ratio per sequence: e^0.5 (clipped to 1.2) x 1, e^-0.5 x -2 (clipped at 0.8)
    loss, _ = group_policy_loss("rloo", logp, old, adv, mask, 0.2, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.6) / 2, abs=1e-6)
    ref = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    kl = k3_kl(logp, ref)
    assert kl[0, 1].item() == pytest.approx(e(1) - 1 - 1, abs=1e-6) and kl[0, 0].item() == 0
    loss_kl, st = group_policy_loss("bnpo", logp, old, adv, mask, 0.2, 0.2, ref, beta=0.5)
    assert loss_kl.item() == pytest.approx((-1.2 - 1.0 + 1.6 + 0.5 * float((kl * mask).sum())) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="rloo"):
        group_policy_loss("rloo", logp, old, adv, mask, ref_logp=ref, beta=0.1)


def trl_stub(logp, **attrs):
    """What TRL's GRPO/RLOO `_compute_loss` reads off the trainer, with a model that yields `logp`."""
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=attrs.pop("splits", 1)),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=Accelerator(),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)), **attrs)


def random_batch(n=6, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    old = logp + (torch.rand(n, t, generator=g, dtype=torch.float64) - 0.5) * 0.8  # ratios e^+-0.4: some clipped
    ref = logp + (torch.rand(n, t, generator=g, dtype=torch.float64) - 0.5)
    mask = (torch.arange(t)[None] < torch.tensor([5, 3, 1, 4, 5, 2])[:, None]).long()
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return logp, old, ref, mask, adv


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_group_losses_and_gradients_match_trl(loss_type, beta):
    from trl.trainer.grpo_trainer import GRPOTrainer

    logp, old, ref, mask, adv = random_batch()
    ours_in, theirs_in = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    splits = 2 if loss_type == "dapo" else 1  # dapo: two optimizer steps share the rollout batch's token count
    n_tokens = float(mask.sum()) / splits
    mine, _ = group_policy_loss(loss_type, ours_in, old, adv, mask, 0.2, 0.28, ref if beta else None, beta, n_tokens, 7)
    stub = trl_stub(theirs_in, beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
                    max_completion_length=7, splits=splits)
    inputs = {"prompt_ids": torch.zeros(6, 1, dtype=torch.long), "prompt_mask": torch.ones(6, 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum().double()}
    theirs = GRPOTrainer._compute_loss(stub, None, inputs)
    assert mine.item() == pytest.approx(theirs.item(), abs=1e-6)
    mine.backward(), theirs.backward()
    assert torch.allclose(ours_in.grad, theirs_in.grad, atol=1e-6)


def test_rloo_loss_matches_trl():
    from trl.trainer.rloo_trainer import RLOOTrainer

    logp, old, _, mask, adv = random_batch(seed=1)
    old = logp + (old - logp) * 0.3  # sequence-level ratios near the clip range
    mine, _ = group_policy_loss("rloo", logp, old, adv, mask, 0.2, 0.28)
    stub = trl_stub(logp, epsilon_low=0.2, epsilon_high=0.28)
    inputs = {"prompt_ids": torch.zeros(6, 1, dtype=torch.long), "prompt_mask": torch.ones(6, 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": adv,
              "old_logps": (old * mask).sum(1)}
    assert mine.item() == pytest.approx(RLOOTrainer._compute_loss(stub, None, inputs).item(), abs=1e-6)


def test_sampling_logprobs_apply_temperature_and_top_p():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]] * 3])  # (1, 3, 4)
    ids = torch.tensor([[0, 1, 3]])
    full = sampling_logprobs(logits, ids, temperature=0.5)
    assert full[0, 0].item() == pytest.approx(torch.log_softmax(torch.tensor([2.0, 1, 0, -1]) / 0.5, -1)[1].item())
    nucleus = sampling_logprobs(logits, ids, temperature=1.0, top_p=0.8)  # keeps tokens 0 and 1 (0.64 + 0.24)
    kept = torch.log_softmax(torch.tensor([2.0, 1.0]), -1)
    assert nucleus[0, 0].item() == pytest.approx(kept[1].item(), abs=1e-6) and nucleus[0, 1].item() == -1e4


def test_group_sampler_skips_finished_rows_and_matches_the_plain_loop():
    """Greedy: the same completions as the shared KV-cache generate (one row per completion); sampled: the same
    completions and log-probs with and without the finished-row skip, which computes fewer sequence-steps; the
    log-probs are those of a full forward under the sampled distribution (temperature 0.7, top-p 0.9)."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    gpt = tiny_gpt(tok).eval()
    prompts = [encode_prompt(tok, q) for q in ("What is 12+34?", "7+8=?", "Compute 99-45.")]
    stops = stop_ids(tok) + tok.encode("5")  # a common stop, so that rows finish at different steps
    greedy = sample_groups(gpt, prompts, 3, 16, stops, tok.pad_id, temperature=0)
    assert greedy.responses == sample(gpt, [p for p in prompts for _ in range(3)], 16, stops, tok.pad_id, 0.0)
    kw = dict(temperature=0.7, top_p=0.9)
    fast = sample_groups(gpt, prompts, 4, 16, stops, tok.pad_id, generator=torch.Generator().manual_seed(1), **kw)
    plain = sample_groups(gpt, prompts, 4, 16, stops, tok.pad_id, generator=torch.Generator().manual_seed(1),
                          compact=False, **kw)
    assert fast.responses == plain.responses and torch.allclose(fast.logprobs, plain.logprobs, atol=1e-6)
    lengths = [len(r) for r in fast.responses]
    assert min(lengths) < 16 and fast.row_steps == sum(lengths) < plain.row_steps
    assert len({tuple(r) for r in fast.responses[:4]}) > 1  # a group's completions differ
    for p, r, lp in zip([p for p in prompts for _ in range(4)], fast.responses, fast.logprobs):
        ids = torch.tensor([p + r])
        want = sampling_logprobs(gpt(ids), ids, 0.7, None, 0.9)[0, len(p) - 1:]
        assert torch.allclose(lp[:len(r)], want, atol=1e-4)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_grpo_task_steps_every_variant(tmp_path):
    """One Lightning fit of two RL steps per variant on a tiny model: the policy moves, the history has the
    reward terms and the rollout speed, and beta > 0 (KL to a reference) works for the token losses and RLOO."""
    import lightning as L

    from mmfm.align.formats import read_prompts
    from mmfm.align.grpo import GRPOConfig, GRPOTask
    from mmfm.align.ppo import Prompts
    from mmfm.align.rewards import RewardTerm, exact_match, format_reward

    tok = build_tokenizer()
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i}+{i}?", "answer": 2 * i} for i in range(4)])
    prompts = Prompts(tok, read_prompts(path))
    terms = [RewardTerm("exact_match", 1.0, fn=exact_match), RewardTerm("length", 0.5, fn=lambda p, c, **_: [
        len(x) / 8 for x in c])]
    for loss in GROUP_LOSSES:
        torch.manual_seed(0)
        policy, ref = tiny_gpt(tok), tiny_gpt(tok)
        before = [p.detach().clone() for p in policy.parameters()]
        cfg = GRPOConfig(prompts_per_step=2, group=4, minibatch=4, max_new=8, loss=loss, lr=1e-3,
                         beta=0.05 if loss in ("grpo", "rloo") else 0.0)
        task = GRPOTask(policy, terms, tok, cfg, ref)
        if loss == "dapo":  # before any update the policy's log-probs are those the sampler returned: ratio 1
            roll = task.rollout(prompts.rows[:2])
            logp = task._logprobs(policy(roll["ids"]), roll["ids"])
            assert torch.allclose(logp[roll["act"]], roll["logp"][roll["act"]], atol=1e-4)
            assert roll["adv"].shape == (8,) and roll["act"].sum() == roll["stats"]["rollout_tokens"]
        loader = torch.utils.data.DataLoader(prompts, batch_size=2, collate_fn=list)
        L.Trainer(max_steps=2 * cfg.updates_per_step(), accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(task, loader)
        h = task.history
        assert [x["step"] for x in h] == [0, 1] and cfg.updates_per_step() == 2, loss
        assert {"reward_exact_match", "reward_length", "rollout_tokens_per_s", "clip_high", "loss"} <= set(h[0])
        assert h[0]["rollout_tokens_per_s"] > 0 and h[0]["response_len"] > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters())), loss
    with pytest.raises(mmfm.config.ConfigError, match="reference"):
        GRPOTask(tiny_gpt(tok), terms, tok, GRPOConfig(beta=0.1))
    assert format_reward(None, ["1+1=2. Answer: 2", "2"]) == [1.0, 0.0]


@pytest.fixture()
def recipes_on_path():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    yield
    sys.path.pop(0)


def test_grpo_recipe_on_user_prompts_with_a_user_reward(tmp_path, recipes_on_path, monkeypatch):
    import grpo

    tok = build_tokenizer()
    tiny_gpt(tok).save_pretrained(tmp_path / "sft")
    (tmp_path / "grpo_user_rewards.py").write_text(
        "def short(prompts, completions, answer, **_):\n"
        "    return [float(len(c) < 6) + float(c.strip() == str(a)) for c, a in zip(completions, answer)]\n")
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"What is {i}+1?", "answer": i + 1} for i in range(12)])
    out = grpo.main(["--init", str(tmp_path / "sft"), "--data", str(data), "reward=grpo_user_rewards:short",
                     "--out", str(tmp_path / "run"), "--max-steps", "2", "prompts_per_step=2", "group=3",
                     "minibatch=6", "max_new=6", "loss=grpo", "lora_rank=4"])
    assert out["steps"] == 2 and out["loss"] == "grpo" and out["scale_rewards"] == "group"
    assert out["rollout_tokens_per_s"] > 0 and out["wall_s"] > 0 and "reward" in out["heldout_reward"]
    saved = mmfm.build_model(tmp_path / "run" / "model")  # LoRA merged: a plain folder
    assert saved.tokenizer is not None and not any("lora" in k for k in saved.state_dict())
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2
    with pytest.raises(mmfm.config.ConfigError, match="reward="):
        grpo.main(["--init", str(tmp_path / "sft"), "--data", str(data), "--out", str(tmp_path / "x")])
    with pytest.raises(mmfm.config.ConfigError, match="loss"):
        grpo.main(["--init", str(tmp_path / "sft"), "loss=ppo", "--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="--init"):
        grpo.main(["--init", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])


def test_lora_policy_samples_with_its_adapters_and_merges_to_a_plain_folder(tmp_path):
    """LoRA round trip: the group sampler (fast decoder, adapters merged for the rollout) gives the LoRA model's
    own greedy completions, the adapters are unmerged after it, and the merged folder loads as a plain GPT with
    the LoRA model's logits."""
    from mmfm.adapt.lora import add_lora, is_lora, merge_lora
    from mmfm.align.grpo import adapters_merged

    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = add_lora(tiny_gpt(tok), rank=4, alpha=8.0, trainable=())
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # peft starts B at 0 (a no-op adapter): give it a real effect
            torch.nn.init.normal_(p, std=0.5)
    assert all(("lora_" in n) == p.requires_grad for n, p in policy.named_parameters())
    prompts = [encode_prompt(tok, "What is 12+34?"), encode_prompt(tok, "7+8=?")]
    ids = torch.tensor([prompts[0]])
    policy.eval()
    with torch.no_grad():
        want_logits = policy(ids)
        seq = list(prompts[0])  # the LoRA model's greedy completion through its module forward (no cache)
        for _ in range(6):
            seq.append(int(policy(torch.tensor([seq]))[0, -1].argmax()))
    with adapters_merged(policy) as merged_for_rollout:
        out = sample_groups(merged_for_rollout, prompts, 2, 6, [], tok.pad_id, temperature=0)
    assert out.responses[0] == seq[len(prompts[0]):] == out.responses[1]
    assert torch.allclose(policy(ids), want_logits, atol=1e-5)  # unmerged again: the same model
    plain = merge_lora(policy)
    assert not is_lora(plain)
    plain.save_pretrained(tmp_path / "merged")
    loaded = mmfm.build_model(tmp_path / "merged").eval()
    assert torch.allclose(loaded(ids), want_logits, atol=1e-5) and loaded.tokenizer is not None


def test_comparison_table_reads_the_pipeline_and_grpo_runs(tmp_path):
    from mmfm.align.compare import main as compare

    run = tmp_path / "align"
    conf = {s: {"greedy": g, "sampled_t1": g / 2} for s, g in (("sft", 0.5), ("ppo", 0.7), ("dpo", 0.6))}
    (run / "ppo").mkdir(parents=True)
    (run / "confirm.json").write_text(json.dumps(conf))
    (run / "align_all.log").write_text("align_all: recipes/ppo.py done in 347 s (total 9 s)\n")
    for s in ("sft", "ppo", "dpo"):
        (run / s).mkdir(exist_ok=True)
        (run / s / "metrics.json").write_text(json.dumps({"heldout/accuracy": 0.5, "wall_s": 10.0, "kl_to_sft": 1.0}))
    grpo = {"loss": "dapo", "steps": 80, "confirm/greedy": 0.9, "confirm/sampled": 0.8, "format_rate": 1.0,
            "kl_to_sft": 0.5, "mean_len": 25.0, "heldout/accuracy": 0.85, "wall_s": 300.0, "train_s": 250.0}
    for name, greedy in (("dapo", 0.9), ("dapo_seed1", 0.8), ("dapo_seed2", 0.85)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({**grpo, "confirm/greedy": greedy}))
    (tmp_path / "ppo").mkdir()  # a PPO re-run: its metrics.json has no confirmation scores, --score wrote them apart
    (tmp_path / "ppo" / "metrics.json").write_text(json.dumps({"steps": 120, "heldout/accuracy": 0.8, "wall_s": 330.0,
                                                                "train_s": 310.5, "kl_to_sft": 9.9}))
    (tmp_path / "ppo" / "confirm_metrics.json").write_text(json.dumps({
        "confirm/greedy": 0.87, "confirm/sampled": 0.7, "format_rate": 0.99, "kl_to_sft": 2.0, "mean_len": 26.0,
        "heldout/accuracy": 0.8}))
    runs = [str(tmp_path / n) for n in ("ppo", "dapo", "dapo_seed1", "dapo_seed2")]
    lines = compare([str(run), *runs]).splitlines()
    assert lines[3].startswith("| ppo (align) | 70.0 | 35.0 |") and "(stage 347)" in lines[3]
    assert lines[5] == "| ppo.py (ppo) | 87.0 | 70.0 | 99.0 | 2.00 | 26.0 | 80.0 | 120 | 310 | 330 |"
    assert lines[6] == "| grpo.py loss=dapo (dapo) | 90.0 | 80.0 | 100.0 | 0.50 | 25.0 | 85.0 | 80 | 250 | 300 |"
    # three seeds of dapo: mean 85.0, sample std 5.0; PPO's single run makes no seed row
    assert lines[-1] == ("| grpo.py loss=dapo (dapo) | 3 | 85.0 ± 5.0 [80.0, 90.0] | 80.0 ± 0.0 [80.0, 80.0] | "
                         "85.0 ± 0.0 [85.0, 85.0] | 0.50 ± 0.00 [0.50, 0.50] |")
