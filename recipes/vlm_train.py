"""Visual question answering with a vision-language model (an mmfm ViT + projector + GPT) on real pixels.

    python recipes/vlm_train.py                              # vlm-tiles-cross (cross fusion), runs/vlm
    python recipes/vlm_train.py --preset vlm-mini tower_steps=0   # the whole canvas into one tower, from scratch
    python recipes/vlm_train.py fusion=prefix --out runs/vlm_prefix   # LLaVA-style prefix fusion
    python recipes/vlm_train.py --max-steps 50 n_train=500 n_test=100 blind=false     # a smoke run
    python recipes/vlm_train.py task=caption clip=runs/clip/model --out runs/vlm_caption   # captioning

Data: 2x2 canvases of real MNIST-5k digits and animal silhouettes with generated questions (mmfm/data/vqa.py),
split by source image. First (tower_steps > 0) trains the image tower as a 20-class classifier of the TRAIN
split's source images only, saved as <out>/tower/model (or starts it from a saved ViT folder, tower=PATH); then
trains the VLM (its tower fixed: freeze_tower=true; LoRA-adapted: tower_lora=8; or trained) and, with
blind=true (default), the same model on a blank image (the question-only control), for
--max-steps each. Writes <out>/model, <out>/metrics.json (vqa_accuracy on the held-out canvases,
vqa_accuracy_blind, vqa_accuracy/<type>, train_s: the tower's and the VLM's training), loss.png and answers.png.

task=caption: the CLIP shards' captioned digits and animals (data/clip, built if missing; CLIP's split by image,
n_caption_val training images held out as a val split), or the user's image-text pairs (caption_data=pairs.csv,
an open_clip CSV or a folder of images with .txt captions: mmfm/data/caption_pairs.py, CLIP's split by image),
the caption after the prompt "caption:" (loss on the caption only). The tower stage is the same, on the classes
(digits, animals) of the TRAINING images only;
tokenizer, tower=, freeze_tower and eval_split work as for VQA. Greedy captions with the KV cache on
n_caption_test held-out images: test/bleu4, test/rouge_l (torchmetrics), and with the CLIP folder `clip=`
(`python recipes/clip_pretrain.py --out runs/clip` writes the default one) test/clip_score of the generated
captions, test/clip_score_real of the real ones and their ratio; captions.png. blind=true also trains the caption
model on blank images (test/*_blind).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

import mmfm
from mmfm.adapt.lora import inject_lora, merge_lora_inplace
from mmfm.config import ConfigError, opt
from mmfm.data.captions import caption_sets, caption_tokenizer, class_sources
from mmfm.data.stepstream import resumable_loader
from mmfm.data.vqa import VQAConfig, vqa_sets
from mmfm.registry import read_config
from mmfm.train import (LossHistory, Timer, checkpoint_to_resume, finish, make_trainer, parse_args, recipe_parser,
                        setup_logging, split_overrides)
from mmfm.train.budget import time_limit
from mmfm.train.strategies import gathered
from mmfm.train.captioning import caption_grid, evaluate_captions, load_clip
from mmfm.train.vlm import QACollate, VLMTask, answer_grid, cell_classification_set, evaluate_vqa, vqa_tokenizer

log = logging.getLogger("vlm_train")
DEFAULT_PRESETS = {"vqa": "vlm-tiles-cross", "caption": "vlm-mini"}  # --preset overrides either
CAPTION_KEYS = ("bleu4", "rouge_l", "caption_clip_score", "caption_clip_score_real", "caption_clip_score_ratio")
DEFAULT_STEPS = {"vqa": 2000, "caption": 1500}  # VQA: with the tower's 1,000 steps, about 15 minutes on 2 cores
# caption: with the tower's 1,000 steps (frozen after), bpe tokens: about 11.5 minutes of training on 2 cores


@dataclass
class VLMTrain:
    batch_size: int = opt(64, lo=1)
    lr: float = opt(1e-3, gt=0.0)
    weight_decay: float = opt(0.05, lo=0.0)
    warmup_steps: int = opt(100, lo=0)
    blind: bool = True  # also train the question-only control
    max_minutes: float = opt(0.0, lo=0.0)  # > 0: stop each model's training at this wall-clock budget
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    task: str = opt("vqa", choices=("vqa", "caption"))
    clip: str = "runs/clip/model"  # task=caption: the mmfm CLIP folder that scores captions
    n_caption_test: int = opt(500, lo=0)  # task=caption: held-out images captioned (0: all 2,943)
    n_caption_val: int = opt(500, lo=0)  # task=caption: training images held out as the val split (eval_split=val)
    caption_data: str = "data/clip"  # task=caption: mmfm.data.imagetext shards (the default, built) or image-text pairs
    tower: str = ""  # a saved mmfm ViT folder (class token, the tile's size) to start the image tower from
    tower_steps: int = opt(1000, lo=0)  # > 0: first train the tower on the train split's source images (classes)
    tower_batch: int = opt(128, lo=1)
    freeze_tower: bool = True  # keep the (pre-trained) tower fixed while the VLM trains
    tower_lora: int = opt(0, lo=0)  # > 0: LoRA adapters of this rank in the tower (base weights fixed), merged on save
    tokenizer: str = opt("bpe", choices=("char", "bpe"))  # bpe: trained on the training questions and answers
    eval_split: str = opt("test", choices=("val", "test"))  # val: for choosing settings; the headline is test


def train_one(args, model, tok, sets, train: VLMTrain, blind: bool):
    """Fits `model` (blind: on blank images, with its own <out>/blind folder and checkpoints, resumed from
    <resume>/blind when that holds some); -> (fit seconds, the trainer)."""
    if blind:
        resume = Path(args.resume) / "blind" if args.resume else None
        args = argparse.Namespace(**{**vars(args), "out": str(Path(args.out) / "blind"),
                                     "resume": str(resume) if resume and (resume / "checkpoints").is_dir() else None})
    collate = QACollate(tok, model.config.block_size - (model.config.image_tokens
                                                         if model.config.fusion == "prefix" else 0))
    loader = resumable_loader(sets["train"], train.batch_size, args.seed, collate_fn=collate)
    task = VLMTask(model, train.lr, train.weight_decay, train.warmup_steps, args.max_steps, blind=blind)
    hist = LossHistory(args.out, prefixes=("train/loss",), title="VLM (blind)" if blind else "VLM")
    trainer = make_trainer(args, callbacks=[hist], limit_val_batches=0, **time_limit(train.max_minutes))
    timer = Timer()
    trainer.fit(task, loader, ckpt_path=checkpoint_to_resume(args.resume))
    return timer.elapsed, trainer


def pretrain_tower(args, model, train_src, val_src, n_classes: int, train: VLMTrain) -> dict:
    """Trains `model.visual` (+ an n_classes head, dropped after) to classify the TRAIN split's source images
    (mmfm.detect.canvas.Sources: VQA's cell sources, or the caption shards' distinct training images), for
    tower_steps, and copies it into the VLM; -> {"tower/val_accuracy" (on val_src, when given), "tower_s"}.
    Resumed from <resume>/tower when that holds checkpoints."""
    from mmfm.models.vit import ViT
    from mmfm.train.classify import ClassifyTask, predict

    size = model.config.vision().img_size
    torch.manual_seed(args.seed)
    clf = ViT(model.config.vision().replace(num_classes=n_classes))
    loader = resumable_loader(cell_classification_set(train_src, size), train.tower_batch, args.seed)
    resume = Path(args.resume) / "tower" if args.resume else None
    targs = argparse.Namespace(**{**vars(args), "out": str(Path(args.out) / "tower"), "max_steps": train.tower_steps,
                                  "resume": str(resume) if resume and (resume / "checkpoints").is_dir() else None})
    task = ClassifyTask(clf, train.lr, train.weight_decay, min(train.warmup_steps, train.tower_steps // 5),
                        train.tower_steps, augment=True)
    trainer = make_trainer(targs, callbacks=[LossHistory(targs.out, prefixes=("train/loss",), title="tower")],
                           limit_val_batches=0)
    timer = Timer()
    trainer.fit(task, loader, ckpt_path=checkpoint_to_resume(targs.resume))
    tower_s = timer.elapsed
    out = {"tower_s": round(tower_s, 1), "tower_steps": trainer.global_step}
    if val_src is not None:
        val = cell_classification_set(val_src, size)
        out["tower/val_accuracy"] = round((predict(clf, val.tensors[0]).argmax(-1) == val.tensors[1]).float().mean()
                                          .item(), 4)
    model.load_tower(clf)
    if trainer.is_global_zero:
        clf.save_pretrained(Path(targs.out) / "model")  # reusable: tower=<out>/tower/model
    log.info("tower: %d steps in %.0f s, val-source accuracy %s", trainer.global_step, tower_s,
             out.get("tower/val_accuracy"))
    return out


def prepare_tower(args, model, train: VLMTrain, train_src, val_src, n_classes: int) -> dict:
    """The tower stage of either task: tower= loads a saved ViT, else tower_steps > 0 pre-trains one (neither
    when resuming the VLM: its checkpoint holds the tower); freeze_tower then fixes it. -> the tower's metrics."""
    resumed = args.resume and (Path(args.resume) / "checkpoints").is_dir()
    tower = {}
    if train.tower and not resumed:
        tower = load_tower(model, train.tower)
    elif train.tower_steps and not resumed:
        tower = pretrain_tower(args, model, train_src, val_src, n_classes, train)
    fix_tower(model, train)
    return tower


def fix_tower(model, train: VLMTrain) -> None:
    """How the tower trains with the VLM: LoRA adapters (tower_lora > 0), fixed (freeze_tower), or fully."""
    if train.tower_lora:
        inject_lora(model.visual, train.tower_lora, alpha=2.0 * train.tower_lora)
    elif train.freeze_tower:
        model.visual.requires_grad_(False)


def load_tower(model, path: str) -> dict:
    """Copies a saved mmfm ViT folder's tower (its head dropped) into the VLM; the shapes must fit."""
    vit = mmfm.build_model(path)
    if vit.config.replace(num_classes=0) != model.config.vision():
        raise ConfigError(f"tower={path}: its ViT config does not fit the VLM's tower {model.config.vision()}")
    model.load_tower(vit)
    return {"tower": path}


def caption_main(args, routed: dict, train: VLMTrain, timer: Timer) -> dict:
    """task=caption: the tower stage on the training images' classes, then the VLM on the CLIP shards' captions;
    caption the held-out images (eval_split), score the captions."""
    clip = load_clip(train.clip)  # before training: a missing folder is refused at once
    from mmfm.data.caption_pairs import caption_pair_data, is_shard_data  # an open_clip CSV or image + .txt folder

    sets = (caption_sets(train.caption_data, n_test=train.n_caption_test, seed=args.seed, n_val=train.n_caption_val)
            if is_shard_data(train.caption_data) else caption_pair_data(train, args.preset, routed, args.seed))
    tok = caption_tokenizer(train.tokenizer, sets["train"])
    size = sets["train"][0].image.shape[-1]

    def build():
        torch.manual_seed(args.seed)
        model = mmfm.build_model(args.preset, **{"img_size": size, **routed["model"], "vocab_size": tok.vocab_size})
        model.tokenizer = tok
        return model

    model = build()
    log.info("%s (%s fusion, captions): %d params; %d train / %d %s images", args.preset, model.config.fusion,
             model.num_params(), len(sets["train"]), len(sets[train.eval_split]), train.eval_split)
    tower = prepare_tower(args, model, train, *(caption_class_sources(sets, train.caption_data)
                                                if train.tower_steps and not train.tower else (None, None, 0)))
    train_s, trainer = train_one(args, model, tok, sets, train, blind=False)
    model = gathered(model)
    if not trainer.is_global_zero:
        return {}
    model.to(trainer.strategy.root_device)
    clip.to(trainer.strategy.root_device)
    split = train.eval_split
    metrics, shown = evaluate_captions(model, sets[split], clip, split=split)
    caption_grid(shown, Path(args.out) / "captions.png")
    if split == "test":  # the names for the held-out scores
        named = {name: f"test/{name.removeprefix('caption_')}" for name in CAPTION_KEYS}  # e.g. <- test/clip_score
        metrics.update({name: metrics[key] for name, key in named.items() if key in metrics})
    metrics.update({"train_s": round(train_s + tower.get("tower_s", 0.0), 1), "vlm_s": round(train_s, 1),
                    "steps": trainer.global_step, "params": model.num_params(), "fusion": model.config.fusion,
                    "clip": str(train.clip), "eval_split": split, "tokenizer": train.tokenizer, **tower})
    if train.blind:
        control = build()
        fix_tower(control, train)  # the same model: its (blank-fed) tower trains as the VLM's does
        blind_s, blind_trainer = train_one(args, control, tok, sets, train, blind=True)
        control.to(blind_trainer.strategy.root_device)
        blind, _ = evaluate_captions(control, sets[split], clip, blind=True, split=split)
        metrics.update({f"{k}_blind": v for k, v in blind.items() if "real" not in k})
        metrics["train_s_blind"] = round(blind_s, 1)
    log.info("captions (%s): BLEU-4 %.3f, ROUGE-L %.3f, CLIP score %.2f vs real %.2f", split,
             metrics[f"{split}/bleu4"], metrics[f"{split}/rouge_l"], metrics.get(f"{split}/clip_score", float("nan")),
             metrics.get(f"{split}/clip_score_real", float("nan")))
    merge_lora_inplace(model.visual)  # tower_lora: adapters folded in, so the folder is a plain VLM
    return finish(args, model, metrics, timer)


def caption_class_sources(sets: dict, shard_dir: str) -> tuple:
    """(train Sources, val Sources, class count) for the tower stage: the caption TRAIN split's distinct images
    and their classes (digits, animals), and the held-out val images (None without n_caption_val)."""
    train_src, n_classes = class_sources(sets["train"], shard_dir)
    val_src = class_sources(sets["val"], shard_dir)[0] if len(sets["val"]) else None
    return train_src, val_src, n_classes


def qa_texts(dataset, n: int = 6000) -> list[str]:
    """Question + answer, and the answer alone (it is encoded after the prompt), of the first n examples."""
    examples = [dataset[j] for j in range(min(n, len(dataset)))]
    return [ex.question + " " + ex.answer for ex in examples] + [ex.answer for ex in examples]


def build_vqa_model(args, routed, data_cfg, tok):
    torch.manual_seed(args.seed)
    model = mmfm.build_model(args.preset, **{"img_size": data_cfg.size, **routed["model"],
                                             "vocab_size": tok.vocab_size})
    model.tokenizer = tok
    return model


def vqa_main(args, routed: dict, train: VLMTrain, data_cfg: VQAConfig, timer: Timer) -> dict:
    """The VQA task: the tower (pre-trained, loaded or fresh), the VLM, then the blind control; metrics."""
    sets = vqa_sets(data_cfg, seed=args.seed)
    tok = vqa_tokenizer(train.tokenizer, qa_texts(sets["train"]))
    model = build_vqa_model(args, routed, data_cfg, tok)
    log.info("%s (%s fusion, %d image tokens): %d params; %d train / %d test questions", args.preset,
             model.config.fusion, model.config.image_tokens, model.num_params(), len(sets["train"]), len(sets["test"]))
    from mmfm.data.vqa import NAMES

    tower = prepare_tower(args, model, train, sets["train"].src, sets["val"].src, len(NAMES))
    train_s, trainer = train_one(args, model, tok, sets, train, blind=False)
    model = gathered(model)
    if not trainer.is_global_zero:
        return {}
    model.to(trainer.strategy.root_device)  # Lightning moved it back to the CPU after fit
    metrics, shown = evaluate_vqa(model, tok, sets[train.eval_split], keep=16)
    answer_grid(shown, Path(args.out) / "answers.png")
    metrics.update({"train_s": round(train_s + tower.get("tower_s", 0.0), 1), "vlm_s": round(train_s, 1),
                    "steps": trainer.global_step, "params": model.num_params(), "fusion": model.config.fusion,
                    "eval_split": train.eval_split, **tower})
    if train.blind:
        control = build_vqa_model(args, routed, data_cfg, tok)
        fix_tower(control, train)  # the same model: its (blank-fed) tower trains as the VLM's does
        blind_s, blind_trainer = train_one(args, control, tok, sets, train, blind=True)
        control.to(blind_trainer.strategy.root_device)
        blind, _ = evaluate_vqa(control, tok, sets[train.eval_split], blind=True)
        metrics.update({"vqa_accuracy_blind": blind["vqa_accuracy"], "train_s_blind": round(blind_s, 1),
                        **{k.replace("vqa_accuracy/", "vqa_accuracy_blind/"): v for k, v in blind.items() if "/" in k}})
    log.info("VQA accuracy %.3f (blind %s)", metrics["vqa_accuracy"], metrics.get("vqa_accuracy_blind"))
    merge_lora_inplace(model.visual)  # tower_lora: adapters folded in, so the folder is a plain VLM
    return finish(args, model, metrics, timer)


def main(argv=None):
    setup_logging()
    args = parse_args(recipe_parser(__doc__.splitlines()[0], None, None, "runs/vlm"), argv)
    task = args.overrides.get("task", "vqa")
    args.preset = args.preset or DEFAULT_PRESETS.get(task, "vlm-mini")
    args.max_steps = args.max_steps or DEFAULT_STEPS.get(task, 1500)
    cfg = read_config(Path(args.preset)) if Path(args.preset).is_dir() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=cfg, train=VLMTrain(), data=VQAConfig())
    train, data_cfg = VLMTrain(**routed["train"]), VQAConfig(**routed["data"])
    if train.threads:
        torch.set_num_threads(train.threads)
    timer = Timer()
    if train.tower_lora and "freeze_tower" in routed["train"] and not train.freeze_tower:
        raise ConfigError("tower_lora= trains LoRA adapters on a fixed tower; freeze_tower=false trains all of it: "
                          "choose one")
    if train.tower and "tower_steps" in routed["train"] and train.tower_steps:
        raise ConfigError("tower= starts the tower from a saved ViT; tower_steps= trains one first: choose one")
    if train.task == "caption":
        if routed["data"]:
            raise ConfigError(f"task=caption reads the CLIP shards; {sorted(routed['data'])} are VQA data settings")
        if train.eval_split == "val" and not train.n_caption_val:
            raise ConfigError("eval_split=val scores the held-out training images: set n_caption_val > 0")
        return caption_main(args, routed, train, timer)
    extra = sorted({"clip", "n_caption_test", "n_caption_val", "caption_data"} & set(routed["train"]))
    if extra:
        raise ConfigError(f"{extra} apply to task=caption only")
    return vqa_main(args, routed, train, data_cfg, timer)


if __name__ == "__main__":
    main()
