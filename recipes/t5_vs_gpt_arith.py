"""T5 (encoder-decoder) vs GPT (decoder-only) on the arithmetic task at equal parameter count and equal steps.

    python recipes/t5_vs_gpt_arith.py                              # 2+2-layer T5 vs 4-layer GPT, width 128
    python recipes/t5_vs_gpt_arith.py --max-steps 300 target=answer n_embd=64

The task is mmfm.align's 2-digit addition/subtraction: a question ("What is 52-38?") in, the worked answer
("12-8=4,5-3-1=1. Answer: 14"; target=answer: "14") out, character-level. The GPT reads question + "\\n" and
continues (loss on the answer only); the T5 encodes the question and decodes the answer. T5's feed-forward
width is solved so its parameter count matches the GPT's (both counts in metrics.json). Both see the same
batches of the same training problems for --max-steps with the same optimizer (the shared AdaptTask), then
answer greedily the held-out problems (mmfm.align.task.is_heldout: never in training): exact match of the
whole text and accuracy of the final answer, on held-out and on training problems. Writes <out>/metrics.json,
<out>/gpt/model and <out>/t5/model.
"""
from __future__ import annotations

import dataclasses
import logging

import lightning as L
import torch

from mmfm.train import Timer, parse_args, recipe_parser, setup_logging, split_overrides, write_metrics
from mmfm.train.arith_t2t import ArithConfig, arith_data, arith_scores, arith_tokenizer, build_gpt, \
    build_t5_matching, examples_table, longest
from mmfm.train.text_tasks import CausalLM, Seq2Seq, encode_causal, encode_seq2seq, generate_causal, \
    generate_texts, train_steps

log = logging.getLogger("recipes.t5_vs_gpt_arith")


def evaluate(data: dict, generate, target: str) -> dict:
    """Greedy answers to the held-out and the probed training problems, scored."""
    out = {}
    for split, key in (("test", "heldout"), ("train_probe", "train")):
        probs, prompts, _ = data[split]
        if not probs:
            continue
        texts = generate(prompts)
        out[key] = arith_scores(probs, texts, target)
        if split == "test":
            out["examples"] = examples_table(probs, prompts, texts)
    return out


def run_gpt(args, cfg: ArithConfig, data: dict, tok, max_new: int, timer: Timer) -> tuple:
    L.seed_everything(args.seed, workers=True)
    _, prompts, targets = data["train"]
    block = longest(tok, [p + "\n" + t for p, t in zip(prompts, targets)]) + 2
    gpt = build_gpt(cfg, tok, block)
    start = timer.elapsed
    train_steps(args, "gpt", CausalLM(gpt), encode_causal(tok, [p + "\n" for p in prompts], targets, block),
                cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_steps)
    fit_s = timer.elapsed - start
    found = evaluate(data, lambda qs: generate_causal(gpt, [q + "\n" for q in qs], max_new), cfg.target)
    return gpt, {"params": gpt.num_params(), "fit_s": round(fit_s, 1), **found}


def run_t5(args, cfg: ArithConfig, data: dict, tok, params: int, max_new: int, timer: Timer) -> tuple:
    L.seed_everything(args.seed, workers=True)
    _, prompts, targets = data["train"]
    src, tgt = longest(tok, prompts) + 1, max_new
    t5 = build_t5_matching(cfg, tok, params)
    start = timer.elapsed
    train_steps(args, "t5", Seq2Seq(t5, tgt), encode_seq2seq(tok, prompts, targets, src, tgt), cfg.batch_size,
                cfg.lr, cfg.weight_decay, cfg.warmup_steps)
    fit_s = timer.elapsed - start

    def generate(qs):
        x, _ = encode_seq2seq(tok, qs, [""] * len(qs), src, 1)
        return generate_texts(t5, x, max_new)
    found = evaluate(data, generate, cfg.target)
    return t5, {"params": t5.num_params(), "d_ff": t5.config.d_ff, "fit_s": round(fit_s, 1), **found}


def main(argv=None) -> dict:
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], preset="gpt+t5", max_steps=600, out="runs/t5_arith")
    args = parse_args(parser, argv)
    if args.preset != "gpt+t5":
        parser.error("--preset: the two models are built from the config (n_embd=, gpt_layers=, t5_layers=)")
    cfg = ArithConfig(**split_overrides(args.overrides, train=ArithConfig())["train"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    timer = Timer()
    data = arith_data(cfg, args.seed)
    tok = arith_tokenizer(data)
    max_new = longest(tok, data["train"][2] + data["test"][2]) + 1  # + the end token
    gpt, gpt_found = run_gpt(args, cfg, data, tok, max_new, timer)
    t5, t5_found = run_t5(args, cfg, data, tok, gpt_found["params"], max_new, timer)
    g, t = gpt_found["heldout"]["exact"], t5_found["heldout"]["exact"]
    metrics = {"gpt": gpt_found, "t5": t5_found, "winner": "t5" if t > g else "gpt" if g > t else "tie",
               "steps": args.max_steps, "train_problems": len(data["train"][0]),
               "heldout_problems": len(data["test"][0]), "config": dataclasses.asdict(cfg)}
    for name, model in (("gpt", gpt), ("t5", t5)):
        model.save_pretrained(f"{args.out}/{name}/model")
    log.info("held-out exact match: GPT %.3f (%d parameters), T5 %.3f (%d parameters)", g, gpt_found["params"], t,
             t5_found["params"])
    write_metrics(args.out, {**metrics, "wall_s": round(timer.elapsed, 2)})
    return metrics


if __name__ == "__main__":
    main()
