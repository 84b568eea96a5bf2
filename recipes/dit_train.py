"""Class-conditional (or text-conditional) DiT on the real 28x28 data: MNIST-5k digits + animal silhouettes.

    python recipes/dit_train.py                                   # 20 classes, flow matching, CPU, <= 15 min, runs/dit
    python recipes/dit_train.py prediction_type=sample --out runs/dit_x0     # the DDPM x0 objective (the old default)
    python recipes/dit_train.py prediction_type=v_prediction depth=4 --max-steps 500 --out runs/dit_v
    python recipes/dit_train.py flow_prediction=velocity flow_shift=1 sampler=euler --out runs/dit_vflow  # velocity
    python recipes/dit_train.py --preset dit-mini-4 text_encoder=runs/clip/model --out runs/dit_text
    python recipes/dit_train.py vae=runs/vae/model --out runs/gen_latent     # on the latents of recipes/vae_train.py
    python recipes/dit_train.py vae=runs/vae/model export=runs/gen_latent/pipeline   # + a diffusers DiTPipeline folder
    python recipes/dit_train.py --data my_images/ classifier=runs/vit_mine/model --out runs/dit_mine

Writes <out>/model (EMA weights + scheduler/ + diffusion.json; + vae/, the decoder, for a latent model),
<out>/samples.png (rows = classes,
columns = seeds) and samples/step_*.png, <out>/metrics.json (conditional accuracy and FID in the
runs/vit classifier's feature space, beside the real-vs-real floor), loss.png, logs/, checkpoints/.
The quality judge: when the default runs/vit/model is missing, recipes/vit_classify.py is run first with its
defaults (logged, ~20 min on a 2-core CPU, once); another missing classifier= stops before training with the
command that makes it; classifier=none skips the metrics (with a warning).
`--data` (and `--val-data`, `--test-data`): any single-label layout mmfm.data.labelled reads (ImageFolder, CSV of
path,label, .npz, DICOM/NIfTI + labels.csv; docs/data.md), resized to the model's input_size, in [-1, 1]; its judge
is a classifier trained on the same data (`python recipes/vit_classify.py --data PATH --out DIR`; same split seed).
`--data PAIRS text_encoder=CLIP` (an open_clip CSV filepath,title or image + .txt folder; mmfm.diffusion.captions):
each image is conditioned on its own caption (caption dropout p_uncond for guidance), pixels or vae= latents;
split as clip_pretrain splits it; scored by CLIP retrieval of the held-out captions (clip_top1/top5, the real
images' ceiling) and FID in CLIP's image space; the grid's rows are the first held-out captions:
    python recipes/dit_train.py --data data/emoji_clipart/pairs.csv text_encoder=runs/clip_emoji/model input_size=32
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import mmfm
from mmfm.adapt.data import load_task, to_backbone_input
from mmfm.config import ConfigError, opt
from mmfm.data.stepstream import resumable_loader
from mmfm.diffusion import make_sampler, make_train_scheduler, save_scheduler
from mmfm.diffusion.captions import CaptionConditioner, caption_quality, caption_training_data
from mmfm.diffusion.flow import FLOW, make_flow_scheduler
from mmfm.diffusion.latent import LATENT_SCALES, latent_training_data
from mmfm.diffusion.schedule import set_clip_sample
from mmfm.diffusion.text import PromptConditioner
from mmfm.eval.gen_quality import evaluate
from mmfm.registry import read_config
from mmfm.train import LossHistory, Timer, checkpoint_to_resume, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import BudgetClock
from mmfm.train.classify import LabelledImages, load_labelled
from mmfm.train.diffusion import DiffusionTask, SampleGrid, label_condition
from mmfm.train.ema import EMA
from mmfm.train.strategies import GatheredEMA

log = logging.getLogger("dit_train")


@dataclass
class DiTTrain:
    datasets: str = "digits,animals"
    batch_size: int = opt(32, lo=1)  # round twelve: 32 at lr 2e-3 (was 64 at 1e-3), chosen on the train split at
    lr: float = opt(2e-3, gt=0.0)  # 10 minutes (docs/generative.md); `batch_size=64 lr=1e-3` gives earlier rounds' runs
    weight_decay: float = opt(0.0, lo=0.0)
    warmup_steps: int = opt(100, lo=0)
    p_uncond: float = opt(0.1, lo=0.0, hi=1.0)  # condition dropout (classifier-free guidance)
    ema_decay: float = opt(0.999, lo=0.0, hi=1.0)
    prediction_type: str = "flow"  # rectified flow (mmfm.diffusion.flow; the default since round eleven, which
    # measured it ahead of x0 at 10 minutes); or the DDPM objectives sample (x0), epsilon, v_prediction
    flow_shift: float | None = opt(None, gt=0.0)  # flow: diffusers' time shift; None = FLOW_DEFAULTS (3: towards noise)
    flow_prediction: str | None = None  # flow: the network outputs `sample` (x0; JiT) or the `velocity`; None = sample
    beta_schedule: str = "squaredcos_cap_v2"  # the DDPM objectives' noise schedule
    sample_every: int = opt(1000, lo=0)  # steps between sample grids (0: only at the end)
    sampler: str = "dpm++"  # ddim, dpm++, ddpm, euler
    sample_steps: int = opt(20, lo=1)
    guidance_scale: float = 4.0  # for the grid and the final metrics (best digits accuracy in the 3000-step sweep)
    classifier: str | None = "runs/vit/model"  # quality judge (recipes/vit_classify.py; the default is trained if absent); none: skip
    eval_seed: int = 0
    text_encoder: str = ""  # a saved mmfm CLIP folder: condition on its text tower (frozen) instead of labels
    text_tokens: bool = False  # also cross-attend over the text tokens (needs text_encoder)
    vae: str = ""  # a saved VAE folder (recipes/vae_train.py): train on its latents, decode samples through it
    latent_scale: str = opt("max", choices=LATENT_SCALES)  # vae=: latents * 1/max|z| (in [-1, 1], sampled clipped)
    # or * 1/std (unit std, sampled unclipped); mmfm.diffusion.latent
    export: str = ""  # with vae=: also write the trained model as a diffusers DiTPipeline folder here
    max_minutes: float = opt(13.5, lo=0.0)  # >0: also stop training after this many minutes (the CPU budget), whichever
    # first; the LR cosine then ends with the budget (a BudgetClock's fraction), so a budgeted run anneals
    limit: int | None = None  # images per dataset and split (tests, smoke runs)
    val_fraction: float = opt(0.1, lo=0.0, lt=1.0)  # with --data and no --val-data (vit_classify's split, so its judge
    test_fraction: float = opt(0.2, lo=0.0, lt=1.0)  # never saw these test images); with --data and no --test-data
    max_bad_fraction: float = opt(0.05, lo=0.0, hi=1.0)  # with --data: unreadable files skipped; past this the run stops
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


DEFAULT_JUDGE = DiTTrain.classifier
FLOW_DEFAULTS = {"flow_shift": 3.0, "flow_prediction": "sample"}  # round eleven's choice (docs/generative.md)
JUDGE_ARGV: list[str] = []  # extra arguments for the judge's own run (tests shrink it); empty = vit_classify's defaults


def ensure_judge(train: DiTTrain, args, n_classes: int) -> tuple[str | None, float]:
    """(the quality classifier's folder or None when skipped, seconds spent training it). Runs before any
    training: the default judge is trained first if missing; any other missing folder stops the run."""
    path = train.classifier
    if path in (None, "", "none"):
        log.warning("classifier=none: conditional accuracy and FID are skipped (no quality metrics)")
        return None, 0.0
    if args.data is not None and path == DEFAULT_JUDGE:
        raise ConfigError(f"--data {args.data}: the default judge {path} classifies the built-in digits and animals; "
                          f"train one on your data (`python recipes/vit_classify.py --data {args.data} --out "
                          "runs/vit_mine`) and pass classifier=runs/vit_mine/model, or classifier=none")
    if (Path(path) / "config.json").is_file():
        judged = read_config(Path(path)).num_classes
        if judged != n_classes:
            raise ConfigError(f"classifier={path} has {judged} classes; the training data has {n_classes}")
        return path, 0.0
    out = Path(path).parent if Path(path).name == "model" else Path(path)
    make = f"python recipes/vit_classify.py --out {out}" + ("" if Path(path).name == "model" else " (it writes <out>/model)")
    if path != DEFAULT_JUDGE or "LOCAL_RANK" in os.environ:  # a typo, or processes launched together (torchrun)
        raise FileNotFoundError(f"classifier={path}: no saved classifier there (config.json missing); make it with "
                                f"`{make}` or pass classifier=none to skip the quality metrics")
    log.info("no quality judge at %s: training it first with `%s` (its defaults; ~20 min on a 2-core CPU, "
             "1392 s measured on one thread; once: later runs reuse it; classifier=none skips the metrics)", path, make)
    spec = importlib.util.spec_from_file_location("vit_classify_recipe", Path(__file__).with_name("vit_classify.py"))
    vit_classify = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclass looks it up
    spec.loader.exec_module(vit_classify)
    timer = Timer()
    threads = [f"threads={train.threads}"] if train.threads else []
    vit_classify.main(["--out", str(out), "--device", args.device, *threads, *JUDGE_ARGV])
    log.info("quality judge trained in %.0f s: %s", timer.elapsed, path)
    return path, round(timer.elapsed, 2)


def build_parser():
    p = recipe_parser(__doc__.splitlines()[0], "dit-mini-4", 4000, "runs/dit")
    p.add_argument("--data", default=None, help="labelled images: ImageFolder, path,label CSV, .npz, DICOM/NIfTI "
                   "folder with labels.csv (default: the datasets= override)")
    p.add_argument("--val-data", default=None, help="validation images with --data (default: split from --data)")
    p.add_argument("--test-data", default=None, help="test images with --data (default: split from --data)")
    return p


def load_data(args, train: DiTTrain, model_cfg: dict) -> tuple[LabelledImages, LabelledImages, dict]:
    """(train images, held-out test images, split sizes for metrics.json) in model space ([-1, 1], the model's
    input_size and channels): the built-in datasets= by default, else a user's --data through mmfm.data.labelled."""
    if args.data is None:
        if args.val_data or args.test_data:
            raise ConfigError("--val-data / --test-data go with --data")
        names = tuple(train.datasets.split(","))
        return load_labelled(names, "train", limit=train.limit), load_labelled(names, "test", limit=train.limit), {}
    size, chans = model_cfg["input_size"], model_cfg["in_channels"]
    task = load_task(args.data, val_data=args.val_data, test_data=args.test_data, size=size, seed=args.seed,
                     val_fraction=train.val_fraction, test_fraction=train.test_fraction,
                     max_bad_fraction=train.max_bad_fraction)
    if task.kind == "multilabel":
        raise ValueError(f"--data {args.data}: multi-label data; the DiT is conditioned on one class per image")

    def split(s):
        x = to_backbone_input(task.images[s], size, chans, (0.5,), (0.5,))  # (N, C, size, size) in [-1, 1]
        y = task.targets(s)
        return LabelledImages(x, y, torch.zeros_like(y), (task.name,), task.label_names)

    return split("train"), split("test"), {f"split/{k}": v for k, v in task.sizes.items()}


def train_scheduler(train: DiTTrain):
    """The DDPM forward process for epsilon / v / x0, or the flow-matching scheduler for prediction_type=flow."""
    if train.prediction_type == FLOW:
        if train.beta_schedule != DiTTrain.beta_schedule:
            raise ConfigError(f"beta_schedule={train.beta_schedule} goes with the DDPM objectives (prediction_type="
                              "sample, epsilon or v_prediction), not flow")
        shift, prediction = flow_settings(train)
        try:
            scheduler = make_flow_scheduler(shift, prediction=prediction)
        except ValueError as e:
            raise ConfigError(f"flow_prediction={prediction}: {e}") from None
    else:
        for name in FLOW_DEFAULTS:
            if getattr(train, name) is not None:
                raise ConfigError(f"{name}={getattr(train, name)} goes with prediction_type=flow, not "
                                  f"{train.prediction_type}")
        scheduler = make_train_scheduler(train.prediction_type, train.beta_schedule)
    try:  # a sampler that cannot integrate this objective fails here, not after training
        make_sampler(train.sampler, scheduler.config)
    except ValueError as e:
        raise ConfigError(f"sampler={train.sampler}: {e}") from None
    return scheduler


def flow_settings(train: DiTTrain) -> tuple[float, str]:
    """(time shift, what the network predicts) of a flow run: the given values, else FLOW_DEFAULTS."""
    shift = FLOW_DEFAULTS["flow_shift"] if train.flow_shift is None else train.flow_shift
    return shift, train.flow_prediction or FLOW_DEFAULTS["flow_prediction"]


def build(args, train: DiTTrain, model_over: dict, n_classes: int, prompts):
    shape = {"num_classes": n_classes}
    if prompts is not None:
        shape = {"num_classes": 0, "text_dim": prompts.text_dim, "context_dim": prompts.context_dim if train.text_tokens else 0}
    if Path(args.preset).is_dir():
        shape = {}
    return mmfm.build_model(args.preset, **{**shape, **model_over})


def main(argv=None):
    setup_logging()
    args = parse_args(build_parser(), argv)
    cfg = read_config(Path(args.preset)) if Path(args.preset).is_dir() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=cfg, train=DiTTrain())
    train = DiTTrain(**routed["train"])
    if train.threads:
        torch.set_num_threads(train.threads)
    captioned = args.data is not None and bool(train.text_encoder)  # a user's image-text pairs: its own captions
    if train.vae and args.data is not None and not captioned:
        raise ConfigError(f"vae={train.vae} goes with the built-in datasets= (the VAE pads their 28 px images) or "
                          f"with caption data (--data PAIRS text_encoder=CLIP); not with labelled --data")
    check_export(train, routed["model"])
    if captioned:
        run = caption_data(args, train, routed, cfg)
        judge, judge_s = caption_judge(train, routed["train"]), 0.0
    else:
        run = class_data(args, train, routed, cfg)
        judge, judge_s = ensure_judge(train, args, len(run.class_names))  # before seeding: the DiT's stream is its own
    torch.manual_seed(args.seed)
    prompts = None
    if captioned:
        prompts = CaptionConditioner.from_folder(train.text_encoder, run.data.captions, run.test.first_captions,
                                                 train.text_tokens)
    elif train.text_encoder:
        prompts = PromptConditioner.from_folder(train.text_encoder, run.class_names, train.text_tokens)
    model = build(args, train, routed["model"], len(run.class_names), prompts)
    scheduler = train_scheduler(train)
    if run.codec is not None:  # latents by max are clipped to [-1, 1] like pixels; at unit std they are not
        set_clip_sample(scheduler, run.codec.clip_sample)
    condition = prompts.batch_condition if prompts else label_condition
    rows = torch.arange(len(run.row_names))
    grid_cond = prompts.condition(rows) if prompts else {"y": rows}
    log.info("%s: %d params, %d train images, %s", args.preset, model.num_params(), len(run.images),
             f"captions from {args.data}" if captioned else f"classes {run.class_names}")

    ema = (GatheredEMA if args.strategy == "fsdp" else EMA)(train.ema_decay)  # FSDP: a full EMA copy per rank
    grid = SampleGrid(args.out, grid_cond, run.row_names, every=train.sample_every, sampler=train.sampler,
                      steps=train.sample_steps, guidance_scale=train.guidance_scale, ema=ema,
                      decode=run.codec.decode if run.codec else None)
    hist = LossHistory(args.out, prefixes=("train/loss",), title="DiT denoising loss")
    clock = BudgetClock(train.max_minutes * 60)  # stops at the budget; the cosine follows its fraction too
    task = DiffusionTask(model, scheduler, condition, train.lr, train.weight_decay, train.warmup_steps, args.max_steps,
                         train.p_uncond, args.seed, progress=clock.fraction if train.max_minutes > 0 else None)
    loader = resumable_loader(TensorDataset(run.images, run.targets), train.batch_size, args.seed)
    timer = Timer()
    trainer = make_trainer(args, callbacks=[ema, grid, hist, clock], limit_val_batches=0)
    trainer.fit(task, loader, ckpt_path=checkpoint_to_resume(args.resume))
    train_s = timer.elapsed
    if not trainer.is_global_zero:  # rank 0 alone evaluates and writes
        return {}
    device = trainer.strategy.root_device  # fit moved the module back to the CPU; evaluate where it trained
    for part in (prompts, run.codec):
        if part is not None:
            part.to(device)
    metrics = {"train/loss": float(trainer.callback_metrics["train/loss"]), "steps": trainer.global_step,
               "train_s": round(train_s, 2), "guidance_scale": train.guidance_scale, "sampler": train.sampler,
               "sample_steps": train.sample_steps, "params": model.num_params(), **run.sizes}
    metrics.update(quality(ema.model.to(device), scheduler, train, judge, run.test, prompts, run.codec))
    if judge_s:
        metrics["judge_train_s"] = judge_s
    metrics["eval_s"] = round(timer.elapsed - train_s, 2)
    save_extras(Path(args.out) / "model", train, ema.model, scheduler, run, args.data if captioned else None)
    return finish(args, ema.model, metrics, timer)


@dataclass
class RunData:
    data: object  # LabelledImages, or CaptionedImages (caption runs)
    test: object  # the held-out split, of the same kind
    images: torch.Tensor  # what the DiT learns: pixels or a VAE's scaled latents (N, C, H, W)
    targets: torch.Tensor  # (N,) class labels, or the image index (caption runs: the conditioner looks it up)
    codec: object  # LatentCodec or None
    class_names: list[str]  # [] for caption runs
    row_names: list[str]  # the sample grid's rows: classes, or the first held-out captions
    sizes: dict


def class_data(args, train: DiTTrain, routed: dict, cfg) -> RunData:
    """The built-in datasets= or a user's labelled --data, in pixels or (vae=) latents."""
    data, test, sizes = load_data(args, train, {**asdict(cfg), **routed["model"]})
    codec, images = None, data.images
    if train.vae:  # the DiT learns the VAE's latents; its shape comes from the VAE
        codec, images, routed["model"] = latent_training_data(train.vae, data.images, routed["model"],
                                                              train.latent_scale)
    return RunData(data, test, images, data.labels, codec, data.class_names, data.class_names, sizes)


def caption_data(args, train: DiTTrain, routed: dict, cfg) -> RunData:
    """A user's image-text pairs (--data with text_encoder=): each image conditioned on its own captions."""
    if args.val_data or args.test_data:
        raise ConfigError(f"--val-data / --test-data: caption data is split from --data {args.data} as "
                          "recipes/clip_pretrain.py splits it (seed, 20% by image), so the CLIP never saw the test")
    if Path(args.preset).is_dir():
        raise ConfigError(f"--preset {args.preset}: caption runs start from a preset (the DiT's text_dim comes "
                          "from text_encoder=)")
    data, test, sizes, codec, images, routed["model"] = caption_training_data(
        args.data, asdict(cfg), routed["model"], train.vae, seed=args.seed, limit=train.limit,
        latent_scale=train.latent_scale)
    rows = [c if len(c) <= 32 else c[:30] + ".." for c in test.first_captions[:GRID_ROWS]]
    return RunData(data, test, images, torch.arange(len(images)), codec, [], rows, sizes)


GRID_ROWS = 8  # caption runs: the sample grid shows the first held-out captions


def caption_judge(train: DiTTrain, given: dict) -> str | None:
    """Caption runs are scored by CLIP retrieval through text_encoder= (no classifier); classifier=none skips it."""
    if train.classifier in (None, "", "none"):
        log.warning("classifier=none: the CLIP retrieval and FID of the samples are skipped (no quality metrics)")
        return None
    if "classifier" in given:
        raise ConfigError(f"classifier={train.classifier}: a caption-conditioned run is scored by CLIP retrieval "
                          f"of its held-out captions through text_encoder={train.text_encoder}; no classifier "
                          "applies (classifier=none skips the metrics)")
    return "clip"


def check_export(train: DiTTrain, model_over: dict) -> None:
    """Refuse an export= that cannot be written, before training; an exported model gets diffusers' timestep
    frequencies (timestep_freq_shift=1, unless given) so that the pipeline folder reloads to the same function."""
    if not train.export:
        return
    if not train.vae:
        raise ConfigError(f"export={train.export}: a diffusers DiTPipeline decodes latents through a VAE; train on "
                          "latents with vae=<folder> (recipes/vae_train.py)")
    if train.text_encoder:
        raise ConfigError(f"export={train.export}: diffusers' DiTPipeline takes class labels, not text_encoder=")
    if train.prediction_type == FLOW and flow_settings(train)[1] == "sample" and train.sampler == "euler":
        raise ConfigError(f"export={train.export}: diffusers' flow Euler step reads a velocity; an x-prediction "
                          "model (flow_prediction=sample) exports with sampler=dpm++")
    if "timestep_freq_shift" not in model_over:
        model_over["timestep_freq_shift"] = 1
        log.info("export=: timestep_freq_shift=1 (diffusers' timestep frequencies, so the exported folder is exact)")


def save_extras(folder: Path, train: DiTTrain, model, scheduler, run: RunData, captions: str | None) -> None:
    """Beside the weights: the training scheduler, diffusion.json (classes or the caption data, conditioning,
    latent scale and image size), the VAE (vae/) of a latent model, and with export= the diffusers DiTPipeline
    folder."""
    save_scheduler(scheduler, folder)
    codec = run.codec
    meta = {"class_names": run.class_names, "datasets": [captions] if captions else list(run.data.datasets),
            "text_encoder": train.text_encoder, "text_tokens": train.text_tokens, "train": asdict(train),
            "latent_scale": codec.scale if codec else None, "image_size": codec.image_size if codec else None}
    if captions:
        meta["conditioning"] = "captions"  # each image's own captions (mmfm.diffusion.captions)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diffusion.json").write_text(json.dumps(meta, indent=2))
    if codec is None:
        return
    codec.vae.save_pretrained(folder / "vae")  # recipes/dit_sample.py decodes through it
    if train.export:
        from mmfm.interop.dit_pipeline import export_dit_pipeline

        export_dit_pipeline(model.cpu().eval(), make_sampler(train.sampler, scheduler.config), codec.vae.cpu(),
                            codec.scale, run.class_names, train.export)


def quality(model, scheduler, train: DiTTrain, judge: str | None, test: LabelledImages, prompts, codec=None) -> dict:
    """Conditional accuracy and FID by the independent classifier `judge` (+ CLIP retrieval for text runs),
    on the model's device, of samples decoded by `codec` for a latent model; {} when the judge is None."""
    if judge is None:
        return {}
    if isinstance(prompts, CaptionConditioner):  # caption runs: CLIP retrieval of the held-out captions
        return caption_quality(model, make_sampler(train.sampler, scheduler.config), prompts, test,
                               train.guidance_scale, train.sample_steps, train.eval_seed,
                               decode=codec.decode if codec else None)
    classifier = mmfm.build_model(judge).eval().to(next(model.parameters()).device)
    sampler = make_sampler(train.sampler, scheduler.config)
    cond_fn = prompts.condition if prompts else None
    kept: dict = {}
    out = evaluate(model.eval(), sampler, classifier, test, train.guidance_scale, train.sample_steps, train.eval_seed,
                   cond_fn, keep=kept, decode=codec.decode if codec else None)
    if prompts is not None:  # does CLIP itself find each sample's prompt among the class prompts?
        for name, (fake, labels) in kept.items():
            out[f"clip_prompt_top1/{name}"] = prompts.retrieval(fake, labels)
            out[f"clip_prompt_top1_real/{name}"] = prompts.retrieval(test.of(name).images, test.of(name).labels)
    return out


if __name__ == "__main__":
    main()
