"""Stage 2b of alignment: DPO (or IPO, hinge, robust DPO, ORPO) on preference pairs, or KTO on unpaired responses.

    python recipes/dpo.py --init runs/align/sft/model --data runs/align/rm/data/preferences.jsonl --out runs/align/dpo
    python recipes/dpo.py --init runs/my_sft/model --data prefs.jsonl --out runs/my_dpo          # your pairs
    python recipes/dpo.py ... nll_alpha=0 --out runs/align/dpo_plain     # plain DPO, no NLL term
    python recipes/dpo.py ... loss=ipo beta=0.5 --out runs/align/ipo
    python recipes/dpo.py ... loss=robust label_smoothing=0.1     # rDPO: 10% of the labels assumed flipped
    python recipes/dpo.py ... loss=orpo beta=0.1 --out runs/align/orpo   # reference-free: NLL + odds-ratio term
    python recipes/dpo.py --init runs/my_sft/model --data labelled.jsonl loss=kto --out runs/my_kto   # unpaired
    python recipes/dpo.py ... lora_rank=8 --out runs/align/dpo_lora     # LoRA adapters (peft), merged when saved

loss= picks the per-pair loss of mmfm.losses.preference_loss (dpo = sigmoid, ipo, hinge, robust; on log-probs
summed over the response) or orpo (per-token mean log-probs, no reference; its NLL term is nll_alpha's), or kto
(mmfm.losses.kto_loss with desirable_weight / undesirable_weight; no NLL term): KTO reads TRL's unpaired shape
{"prompt", "completion", "label": true|false}, or splits pairs into a desirable and an undesirable response.

--data is JSONL with prompt/chosen/rejected, plain or conversational (or TRL's implicit-prompt shape); without
it the built-in task's pairs are sampled from the --init model as the reward-model recipe does (PairConfig) and
written to <out>/data. The policy and the frozen reference both start from --init; the reference's log-probs of
every chosen and rejected response are computed once before training and cached on disk (ref_cache=, default
<out>/ref_cache: a file keyed by the reference's weights and the encoded data, which a later run with the same
reference and data loads; mmfm.align.refcache). lora_rank > 0 trains LoRA adapters instead of every weight
(lora_alpha), merged into the saved model. By default the loss adds
`nll_alpha` x the per-token NLL of the chosen response (RPO; TRL's `rpo_alpha`): the chosen and rejected
answers share almost every token, and plain DPO raised their log-ratio margin by pushing both down. Writes
<out>/model, <out>/loss.png and <out>/metrics.json: the held-out pairs' implicit-reward accuracy (--val-data or a
split of --data), the KL to the reference on held-out prompts, and for the built-in task held-out task
accuracy greedy and at temperature 1 (when the records carry the task's columns a, op, b).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

import mmfm
from mmfm.adapt.lora import lora_or_full, merge_lora
from mmfm.align.builtin import PairConfig, problem_of, write_preferences
from mmfm.align.chat import encode_turns
from mmfm.align.data import Pairs, pair_collate
from mmfm.align.formats import add_data_args, read_preferences
from mmfm.align.kto import KTOTask, Unpaired, read_kto, unpaired_collate
from mmfm.align.refcache import cached_logprobs
from mmfm.align.rollout import evaluate, kl_to_reference, rows_logprobs
from mmfm.align.run import builtin_only, fit, splits, train_loader
from mmfm.align.splits import heldout_problems
from mmfm.align.tasks import DPO_LOSSES, DPOTask
from mmfm.config import ConfigError, opt
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import time_limit

log = logging.getLogger("dpo")


@dataclass
class DPOConfig(PairConfig):  # the pair fields shape the built-in task's pairs only
    loss: str = opt("dpo", choices=(*DPO_LOSSES, "kto"))  # dpo (= sigmoid), ipo, hinge, robust, orpo, kto
    beta: float = opt(0.1, gt=0.0)
    label_smoothing: float = opt(0.0, lo=0.0, lt=0.5)  # loss=robust only: the assumed label-flip rate
    nll_alpha: float = opt(1.0, lo=0.0)  # RPO: + alpha * per-token NLL of the chosen response (0: plain DPO / IPO); not kto
    desirable_weight: float = opt(1.0, gt=0.0)  # loss=kto only: weights of desirable / undesirable responses
    undesirable_weight: float = opt(1.0, gt=0.0)
    ref_cache: str = ""  # folder of the reference log-probs cache ("": <out>/ref_cache)
    lora_rank: int = opt(0, lo=0)  # > 0: train LoRA adapters (peft) on the attention and MLP layers, merged at the end
    lora_alpha: float = opt(16.0, gt=0.0)
    val_fraction: float = 0.1  # --data without --val-data: the share held out
    batch_size: int = opt(32, lo=1)
    lr: float = opt(2e-5, gt=0.0)
    weight_decay: float = opt(0.0, lo=0.0)
    warmup: int = opt(10, lo=0)
    max_minutes: float = opt(0.0, lo=0.0)  # >0: also stop training after this many minutes (rank 0's clock), whichever first
    n_eval: int = 400  # built-in task's pairs (records with a, op, b): held-out problems for accuracy and the KL


def reference_logprobs(model, pairs: Pairs, pad: int) -> torch.Tensor:
    """log model(chosen), log model(rejected) of every pair -> (N, 2)."""
    return torch.stack([rows_logprobs(model, [r[k] for r in pairs.rows], pad) for k in (0, 1)], 1)


def heldout_metrics(policy, reference, tok, pairs: Pairs, prompts: list[list[int]]) -> dict:
    """Implicit-reward accuracy (the policy/reference log-ratio prefers chosen) on held-out pairs, and the KL."""
    ratio = reference_logprobs(policy, pairs, tok.pad_id) - reference_logprobs(reference, pairs, tok.pad_id)
    return {"reward_acc": float((ratio[:, 0] > ratio[:, 1]).float().mean()), "n": len(pairs),
            "kl_to_reference": kl_to_reference(policy, reference, tok, prompts)}


def check_options(args, cfg: DPOConfig) -> None:
    """Options that the chosen loss would ignore are errors."""
    given = set(args.overrides)
    if "label_smoothing" in given and cfg.loss != "robust":
        raise ConfigError(f"label_smoothing is the flip rate of loss=robust; loss={cfg.loss} ignores it")
    kto_only = sorted(given & {"desirable_weight", "undesirable_weight"})
    if kto_only and cfg.loss != "kto":
        raise ConfigError(f"{', '.join(kto_only)} weigh KTO's responses; loss={cfg.loss} ignores them")
    if cfg.loss == "kto" and "nll_alpha" in given:
        raise ConfigError("nll_alpha adds the chosen response's NLL to a pair loss; loss=kto has no pairs")


def build_task(cfg: DPOConfig, args, policy, reference, tok, train):
    """(the training dataset, its collate, the task), with the reference log-probs from the disk cache."""
    pad, max_len = tok.pad_id, reference.config.block_size
    folder = cfg.ref_cache or f"{args.out}/ref_cache"
    if cfg.loss == "kto":
        data = Unpaired(tok, train, max_len, args.seed)
        ref = cached_logprobs(reference, data.rows, lambda: reference_logprobs(reference, data, pad), folder, {"pad": pad})
        return data, unpaired_collate(pad), KTOTask(policy, ref, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight,
                                                    cfg.lr, cfg.weight_decay, cfg.warmup, args.max_steps)
    data = Pairs(tok, train, max_len)
    ref = torch.zeros(len(data), 2) if cfg.loss == "orpo" else cached_logprobs(
        reference, data.rows, lambda: reference_logprobs(reference, data, pad), folder, {"pad": pad})
    return data, pair_collate(pad), DPOTask(policy, ref, cfg.beta, cfg.loss, cfg.lr, cfg.weight_decay, cfg.warmup,
                                            args.max_steps, cfg.nll_alpha, cfg.label_smoothing)


def kto_heldout(policy, reference, tok, val: Unpaired) -> dict:
    """Mean implicit reward log pi/ref of held-out desirable and undesirable responses (and their gap)."""
    rows, good = [r[0] for r in val.rows], torch.tensor(val.labels)
    reward = (rows_logprobs(policy, rows, tok.pad_id) - rows_logprobs(reference, rows, tok.pad_id)).cpu()
    out = {"n": len(rows), "reward_desirable": float(reward[good].mean()) if good.any() else float("nan"),
           "reward_undesirable": float(reward[~good].mean()) if (~good).any() else float("nan")}
    return {**out, "reward_gap": out["reward_desirable"] - out["reward_undesirable"]}


def heldout_report(loss: str, policy, reference, tok, heldout, seed: int) -> dict:
    """Held-out pairs' implicit-reward accuracy, or held-out responses' rewards for kto; and the KL."""
    prompts = [encode_turns(tok, e.turns, add_generation_prompt=True)[0] for e in heldout]
    if loss == "kto":
        val = Unpaired(tok, heldout, policy.config.block_size, seed)
        return {"heldout_responses": {**kto_heldout(policy, reference, tok, val),
                                      "kl_to_reference": kl_to_reference(policy, reference, tok, prompts)}}
    return {"heldout_pairs": heldout_metrics(policy, reference, tok, Pairs(tok, heldout, policy.config.block_size),
                                             prompts)}


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 150, "runs/align/dpo")
    parser.add_argument("--init", default="runs/align/sft/model", help="SFT model folder (policy and reference)")
    add_data_args(parser, "preference pairs (or, for loss=kto, unpaired labelled responses)")
    args = parse_args(parser, argv)
    cfg = DPOConfig(**split_overrides(args.overrides, train=DPOConfig())["train"])
    builtin_only(args, ("n_prompts", "n_heldout_prompts", "samples", "pairs_per_prompt"))
    check_options(args, cfg)
    torch.manual_seed(args.seed)
    timer = Timer()
    policy = mmfm.build_model(args.init)
    tok, reference = policy.tokenizer, copy.deepcopy(policy).eval().requires_grad_(False)
    reader = read_kto if cfg.loss == "kto" else read_preferences
    train, heldout, sizes = splits(args, lambda folder: write_preferences(folder, policy, tok, cfg, args.seed), reader, cfg.val_fraction)
    task_pairs = all(problem_of(e.extra) for e in train)  # the built-in task's pairs (columns a, op, b)
    if "n_eval" in args.overrides and not task_pairs:
        raise ConfigError("n_eval evaluates the built-in task; these pairs lack its columns a, op, b")
    trained = lora_or_full(policy, cfg.lora_rank, cfg.lora_alpha, "lora_alpha" in args.overrides)
    data, collate, task = build_task(cfg, args, trained, reference, tok, train)
    hist = LossHistory(args.out, prefixes=("train/loss", "train/reward_acc"), title=f"align: {cfg.loss.upper()}")
    trainer = make_trainer(args, callbacks=[hist], limit_val_batches=0, log_every_n_steps=5,
                           **time_limit(cfg.max_minutes))
    if not fit(trainer, task, args, train_loader(data, cfg.batch_size, collate, args.seed)):
        return {}
    policy = merge_lora(task.policy)  # under FSDP the gathered copy (mmfm.align.run.fit); LoRA folded in
    reference.to(trainer.strategy.root_device)
    metrics = {"loss": cfg.loss, "beta": cfg.beta, "lr": cfg.lr, "steps": trainer.global_step, "data": sizes,
               **({"label_smoothing": cfg.label_smoothing} if cfg.loss == "robust" else {}),
               **({"desirable_weight": cfg.desirable_weight, "undesirable_weight": cfg.undesirable_weight,
                   "responses": len(data)} if cfg.loss == "kto" else {"nll_alpha": cfg.nll_alpha, "pairs": len(data)})}
    if len(heldout):
        metrics.update(heldout_report(cfg.loss, policy, reference, tok, heldout, args.seed))
    if task_pairs:
        problems = heldout_problems("eval", cfg.n_eval)
        metrics.update(heldout=evaluate(policy, tok, problems), heldout_t1=evaluate(policy, tok, problems, temperature=1.0),
                       kl_to_sft=kl_to_reference(policy, reference, tok, problems))
    return finish(args, policy, metrics, timer)


if __name__ == "__main__":
    main()
