"""The preference-loss family (mmfm.losses.preference_loss, ORPO, KTO) against hand-computed values and against
TRL's own loss code (the dev extra installs TRL as a test-only reference).

TRL keeps these losses inside trainer methods that also run the model: each parity test calls the TRL method on a
minimal stand-in for the trainer whose "model" returns the per-token log-probs we chose, so TRL's own arithmetic
(not a copy of it) produces the numbers compared to 1e-6.
"""
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mmfm.losses import preference_loss
from mmfm.losses.preference import PAIR_LOSSES, kto_loss, kto_reference_point, log1mexp, orpo_loss


def softplus(x):
    return math.log1p(math.exp(x))


class Accelerator:
    """What the TRL loss methods call on their accelerator, on one process."""

    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


class LogProbModel:
    """Returns the given per-token log-probs (and zero entropy/logits) whatever the inputs, as TRL's fused head would."""

    training = True

    def __init__(self, per_token_logps):
        self.per_token_logps = per_token_logps

    def __call__(self, **_):
        z = torch.zeros_like(self.per_token_logps)
        return SimpleNamespace(log_probs=self.per_token_logps, entropy=z, mean_logits=z, is_top1=z.bool(), aux_loss=None)


def trainer_stub(model, **attrs):
    return SimpleNamespace(model=model, accelerator=Accelerator(), aux_loss_enabled=False, _metrics=defaultdict(
        lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1, **attrs)


def pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 30 + 1) for _ in range(4)]


def per_token(seq_logps: torch.Tensor, lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, width-1) that sum to seq_logps, and a completion mask (B, width) with `lengths` ones."""
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    tok = torch.zeros(len(lengths), width - 1, dtype=seq_logps.dtype)
    for i, n in enumerate(lengths):
        mask[i, width - n:] = 1
        tok[i, width - n - 1:] = seq_logps[i] / n
    return tok, mask


def trl_dpo(loss_type, c, r, rc, rr, beta, label_smoothing=0.0, lengths=None):
    from trl.trainer.dpo_trainer import DPOTrainer

    n = len(c)
    lengths = lengths or [1] * (2 * n)
    tok, mask = per_token(torch.cat([c, r]), lengths, max(lengths) + 2)
    stub = trainer_stub(LogProbModel(tok), ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                        use_weighting=False)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    return DPOTrainer._compute_loss(stub, stub.model, inputs, False)


def test_pair_losses_by_hand():
    c, r, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))  # h = 1 - (-1) = 2
    by_hand = {"sigmoid": softplus(-1.0), "ipo": (2 - 1 / (2 * 0.5)) ** 2, "hinge": 0.0,
               "robust": (0.9 * softplus(-1.0) - 0.1 * softplus(1.0)) / 0.8}
    for loss_type, want in by_hand.items():
        got = preference_loss(loss_type, c, r, rc, rr, beta=0.5, label_smoothing=0.1)
        assert got.shape == (1,) and got.item() == pytest.approx(want, abs=1e-6), loss_type
    assert preference_loss("hinge", c, r, rc, rr, beta=0.1).item() == pytest.approx(0.8, abs=1e-6)  # 1 - 0.1 * 2
    assert preference_loss("sigmoid", rc, rr, rc, rr).item() == pytest.approx(math.log(2), abs=1e-6)
    robust0 = preference_loss("robust", c, r, rc, rr, beta=0.5)  # no flips: plain DPO
    assert robust0.item() == pytest.approx(softplus(-1.0), abs=1e-6)


def test_bad_loss_names_and_smoothing_are_errors():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="loss_type='dpo2'"):
        preference_loss("dpo2", x, x, x, x)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss("robust", x, x, x, x, label_smoothing=0.5)


@pytest.mark.parametrize("loss_type", PAIR_LOSSES)
def test_pair_losses_match_trl(loss_type):
    """TRL's DPOTrainer loss on the same summed log-probs (one completion token each, so TRL's per-token IPO
    normalisation divides by 1) agrees to 1e-6 for every pair loss TRL implements."""
    c, r, rc, rr = pairs()
    for beta, eps in ((0.1, 0.0), (0.5, 0.2)):
        mine = preference_loss(loss_type, c, r, rc, rr, beta=beta, label_smoothing=eps).mean()
        theirs = trl_dpo(loss_type, c, r, rc, rr, beta, eps)
        assert float(mine) == pytest.approx(float(theirs), abs=1e-6, rel=1e-6)


def test_ipo_with_mean_logprobs_is_trls_length_normalised_ipo():
    c, r, rc, rr = pairs(4, seed=1)
    lengths = [3, 5, 2, 7, 4, 1, 6, 2]  # chosen then rejected
    n = torch.tensor(lengths, dtype=torch.float64)
    mine = preference_loss("ipo", c / n[:4], r / n[4:], rc / n[:4], rr / n[4:], beta=0.3).mean()
    assert float(mine) == pytest.approx(float(trl_dpo("ipo", c, r, rc, rr, 0.3, lengths=lengths)), abs=1e-6)


def test_log1mexp_is_stable():
    x = torch.tensor([-1e-8, -0.1, -0.7, -5.0, -50.0], dtype=torch.float64)
    assert torch.allclose(log1mexp(x), torch.log(1 - torch.exp(x)), rtol=1e-6)
    assert torch.isfinite(log1mexp(torch.tensor([-1e-30, -800.0]))).all()


def test_orpo_by_hand_and_matches_trl():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    c, r = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)])  # odds 1 and 0.25: log odds ratio log 4
    assert orpo_loss(c, r, beta=0.2).item() == pytest.approx(0.2 * softplus(-math.log(4)), abs=1e-6)
    c, r = (-(torch.rand(8, generator=torch.Generator().manual_seed(s)) * 3 + 0.01) for s in (2, 3))
    stub = SimpleNamespace(beta=0.1, accelerator=Accelerator())
    theirs = ORPOTrainer.odds_ratio_loss(stub, c, r)[0]  # the term ORPO subtracts from its NLL
    assert torch.allclose(orpo_loss(c, r, beta=0.1), -theirs, atol=1e-6)


def test_kto_by_hand_and_matches_trl():
    from trl.trainer.kto_trainer import KTOTrainer

    logps, ref = torch.tensor([-2.0, -5.0]), torch.tensor([-3.0, -4.0])  # log ratios +1, -1
    got = kto_loss(logps, ref, torch.tensor([True, False]), kl=0.5, beta=2.0, undesirable_weight=1.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert got.tolist() == pytest.approx([1 - sig(2 * 0.5), 1.5 * (1 - sig(2 * 1.5))], abs=1e-6)

    g = torch.Generator().manual_seed(4)
    logps, ref, kl_logps, ref_kl = (-(torch.rand(6, generator=g) * 20 + 1) for _ in range(4))
    label = torch.tensor([True, False, True, True, False, False])
    kl = kto_reference_point(kl_logps, ref_kl)
    mine = kto_loss(logps, ref, label, kl, beta=0.3, desirable_weight=1.2, undesirable_weight=0.8)
    tok, mask = per_token(logps, [1] * 6, 3)
    kl_tok, kl_mask = per_token(kl_logps, [1] * 6, 3)
    model = LogProbModel(tok)
    stub = trainer_stub(model, calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=0.3,
                        desirable_weight=1.2, undesirable_weight=0.8)
    stub._compute_kl_logps = lambda _model, _batch: kl_tok.sum(-1)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "KL_input_ids": torch.zeros_like(kl_mask), "KL_attention_mask": torch.ones_like(kl_mask),
              "KL_completion_mask": kl_mask, "label": label, "ref_logps": ref, "ref_KL_logps": ref_kl}
    theirs = KTOTrainer._compute_loss(stub, model, inputs, False)
    assert float(theirs) == pytest.approx(float(mine.mean()), abs=1e-6)


def _pair_batch(tok, n=4):
    from mmfm.align.chat import Turn
    from mmfm.align.data import Pairs, pair_collate
    from mmfm.align.formats import Example

    examples = [Example(f"pair {i}", [Turn("user", f"What is {i}+{i}?")], [Turn("assistant", f"{2 * i}", True)],
                        [Turn("assistant", f"{2 * i + 1} or so", True)]) for i in range(n)]
    return pair_collate(tok.pad_id)([Pairs(tok, examples)[i] for i in range(n)])


@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge", "robust", "orpo"])
def test_dpo_task_losses_at_the_reference(loss):
    """Each loss= of the DPO recipe through DPOTask, with the policy equal to the reference (h = 0): sigmoid and
    robust give log 2, hinge 1, ipo (1 / (2 beta))^2; orpo (no reference) gives -beta log sigmoid(log odds) of the
    policy's own per-token means. A gradient reaches the policy."""
    import mmfm
    from mmfm.align.chat import build_tokenizer
    from mmfm.align.rollout import rows_logprobs
    from mmfm.align.tasks import DPOTask

    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = mmfm.build_model("gpt-test", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64)
    batch = _pair_batch(tok)
    rows = [[(i.tolist(), m.long().tolist()) for i, m in zip(batch[k]["ids"], batch[k]["loss_mask"])]
            for k in ("chosen", "rejected")]
    ref = torch.stack([rows_logprobs(policy, r, tok.pad_id) for r in rows], 1)
    task = DPOTask(policy, ref, beta=0.25, loss=loss, label_smoothing=0.1 if loss == "robust" else 0.0)
    out = task.training_step(batch, 0)
    if loss == "orpo":
        n = [batch[k]["loss_mask"][:, 1:].sum(-1) for k in ("chosen", "rejected")]
        want = orpo_loss(ref[:, 0] / n[0], ref[:, 1] / n[1], 0.25).mean().item()
    else:
        want = {"dpo": math.log(2), "robust": math.log(2), "hinge": 1.0, "ipo": (1 / 0.5) ** 2}[loss]
    assert out.item() == pytest.approx(want, abs=1e-5)
    out.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_dpo_recipe_refuses_label_smoothing_without_robust(tmp_path):
    import sys
    from pathlib import Path

    from mmfm.config import ConfigError

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    try:
        import dpo
    finally:
        sys.path.pop(0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        dpo.main(["--out", str(tmp_path), "loss=ipo", "label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="loss"):
        dpo.main(["--out", str(tmp_path), "loss=kto2"])


def _tiny_policy(tok, seed=0):
    import mmfm

    torch.manual_seed(seed)
    return mmfm.build_model("gpt-test", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64)


def test_reference_logprobs_cached_to_disk_equal_fresh_ones(tmp_path):
    """The first call computes and writes the file; a second with the same weights and rows loads it (the compute
    is not called) with exactly the fresh values; changed weights or changed rows give another file."""
    from mmfm.align.chat import build_tokenizer
    from mmfm.align.refcache import cached_logprobs
    from mmfm.align.rollout import rows_logprobs

    tok = build_tokenizer()
    ref = _tiny_policy(tok).eval()
    batch = _pair_batch(tok)
    rows = [(i.tolist(), m.long().tolist()) for i, m in zip(batch["chosen"]["ids"], batch["chosen"]["loss_mask"])]
    calls = []

    def compute(model=ref, rows=rows):
        calls.append(1)
        return rows_logprobs(model, rows, tok.pad_id)

    fresh = rows_logprobs(ref, rows, tok.pad_id)
    first = cached_logprobs(ref, rows, compute, tmp_path, {"pad": tok.pad_id})
    again = cached_logprobs(ref, rows, compute, tmp_path, {"pad": tok.pad_id})
    assert len(calls) == 1 and len(list(tmp_path.glob("ref_logps-*.pt"))) == 1
    assert torch.equal(first, fresh) and torch.equal(again, fresh)
    with torch.no_grad():
        next(ref.parameters())[0, 0] += 1.0  # another reference: recomputed, a second file
    other = cached_logprobs(ref, rows, compute, tmp_path, {"pad": tok.pad_id})
    assert len(calls) == 2 and len(list(tmp_path.glob("ref_logps-*.pt"))) == 2
    assert torch.equal(other, rows_logprobs(ref, rows, tok.pad_id)) and not torch.equal(other, fresh)
    cached_logprobs(ref, rows[:2], lambda: compute(rows=rows[:2]), tmp_path, {"pad": tok.pad_id})  # other data
    assert len(calls) == 3 and not list(tmp_path.glob("*.tmp*"))


def _write_jsonl(path, records):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_unpaired_data_kl_rows_and_kto_task(tmp_path):
    """TRL's unpaired shape is read (a non-boolean label is an error naming the line), pairs unpair into a desirable
    and an undesirable response, each KL row pairs the prompt with another prompt's response, and KTOTask's loss
    at the reference is w (1 - sigmoid(0)) = w / 2 per response and falls when trained on the batch."""
    from mmfm.align.chat import build_tokenizer
    from mmfm.align.kto import KTOTask, Unpaired, read_unpaired, unpair, unpaired_collate
    from mmfm.align.rollout import rows_logprobs
    from mmfm.data.formats import DataFormatError

    tok = build_tokenizer()
    recs = [{"prompt": f"What is {i}+{i}?", "completion": f"{2 * i + (i % 2)}", "label": i % 2 == 0} for i in range(6)]
    responses = read_unpaired(_write_jsonl(tmp_path / "u.jsonl", recs))
    assert [r.desirable for r in responses] == [True, False] * 3 and responses[1].completion[0].content == "3" and responses[1].turns[0].content == "What is 1+1?"
    with pytest.raises(DataFormatError, match=r"u2.jsonl:2.*label"):
        read_unpaired(_write_jsonl(tmp_path / "u2.jsonl", [recs[0], {**recs[1], "label": "no"}]))
    with pytest.raises(DataFormatError, match="unpaired preference"):
        read_unpaired(_write_jsonl(tmp_path / "u3.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}]))
    from mmfm.align.formats import read_preferences

    pairs = read_preferences(_write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1?", "chosen": "2", "rejected": "3"}]))
    assert [(r.completion[0].content, r.desirable) for r in unpair(pairs)] == [("2", True), ("3", False)]
    data = Unpaired(tok, responses, seed=0)
    for i, ((ids, mask), (kl_ids, kl_mask)) in enumerate(data.rows):  # same prompt, another record's response
        prompt_len = mask.index(1)
        assert kl_ids[:prompt_len] == ids[:prompt_len] and kl_ids[prompt_len:] != ids[prompt_len:]
    policy = _tiny_policy(tok)
    ref = torch.stack([rows_logprobs(policy, [r[k] for r in data.rows], tok.pad_id) for k in (0, 1)], 1).detach()
    batch = unpaired_collate(tok.pad_id)([data[i] for i in range(len(data))])
    task = KTOTask(policy, ref, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    loss = task.training_step(batch, 0)
    assert loss.item() == pytest.approx((3 * 0.5 + 3 * 1.0) / 6, abs=1e-6)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        task.training_step(batch, 0).backward()
        opt.step()
    assert task.training_step(batch, 0).item() < loss.item() - 0.01


@pytest.fixture
def recipes_path():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    yield
    sys.path.pop(0)


def _changed(before: dict, after: dict) -> set[str]:
    """Names of the tensors that differ between two state dicts (tied weights under both names)."""
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_dpo_recipe_kto_with_lora_reuses_its_reference_cache(tmp_path, recipes_path, caplog):
    """loss=kto on a user's unpaired JSONL, LoRA: the merged folder loads as a plain GPT in which only the adapted
    Linear weights moved; the reference log-probs are written once and the second run loads them; options the
    loss would ignore are errors."""
    import dpo

    import mmfm
    from mmfm.align.chat import build_tokenizer
    from mmfm.config import ConfigError

    tok = build_tokenizer()
    init = _tiny_policy(tok)
    init.tokenizer = tok
    init.save_pretrained(tmp_path / "sft")
    recs = [{"prompt": f"What is {i}+{i}?", "completion": f"{2 * i + i % 2}", "label": i % 2 == 0} for i in range(12)]
    data = _write_jsonl(tmp_path / "u.jsonl", recs)
    argv = ["--init", str(tmp_path / "sft"), "--data", str(data), "loss=kto", "lora_rank=4", "batch_size=4",
            "--max-steps", "2", "--out", str(tmp_path / "run"), "undesirable_weight=1.5"]
    out = dpo.main(argv)
    assert out["loss"] == "kto" and out["steps"] == 2 and out["responses"] == 11 and out["undesirable_weight"] == 1.5
    assert {"reward_desirable", "reward_undesirable", "kl_to_reference"} <= set(out["heldout_responses"])
    saved = mmfm.build_model(tmp_path / "run" / "model")
    moved = _changed(init.state_dict(), saved.state_dict())
    assert moved and all(k.rsplit(".", 1)[0].endswith(("qkv", "proj", "fc1", "fc2")) for k in moved), moved
    assert len(list((tmp_path / "run" / "ref_cache").glob("ref_logps-*.pt"))) == 1
    with caplog.at_level("INFO", logger="mmfm.align.refcache"):
        dpo.main(argv[:-3] + ["--max-steps", "1", "--out", str(tmp_path / "run"), "ref_cache=" + str(tmp_path / "run" / "ref_cache")])
    assert "loaded from" in caplog.text
    for bad, match in (("loss=dpo desirable_weight=2", "desirable_weight"), ("loss=kto nll_alpha=0", "nll_alpha"),
                       ("loss=kto lora_alpha=4", "lora_rank")):
        with pytest.raises(ConfigError, match=match):
            dpo.main(["--init", str(tmp_path / "sft"), "--data", str(data), *bad.split(), "--out", str(tmp_path / "x")])


def test_sft_recipe_with_lora_merges_into_a_plain_folder(tmp_path, recipes_path):
    import sft

    import mmfm
    from mmfm.align.chat import build_tokenizer

    tok = build_tokenizer()
    init = _tiny_policy(tok)
    init.tokenizer = tok
    init.save_pretrained(tmp_path / "base")
    data = _write_jsonl(tmp_path / "c.jsonl", [{"prompt": f"{i}+1?", "completion": f"{i + 1}"} for i in range(10)])
    out = sft.main(["--init", str(tmp_path / "base"), "--data", str(data), "lora_rank=4", "lora_alpha=8",
                    "batch_size=4", "lr=1e-2", "--max-steps", "3", "--out", str(tmp_path / "run")])
    assert out["steps"] == 3 and out["val/loss"] > 0
    saved = mmfm.build_model(tmp_path / "run" / "model")
    assert not any("lora" in k for k in saved.state_dict()) and saved.tokenizer is not None
    moved = _changed(init.state_dict(), saved.state_dict())
    assert moved and all(k.rsplit(".", 1)[0].endswith(("qkv", "proj", "fc1", "fc2")) for k in moved), moved
