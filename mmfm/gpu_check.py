"""One prepared accelerator check: every recipe for a few dozen steps at the default precision, the fast
decode path against the module forward, and training throughput of the real-size models, in one JSON report.

    python -m mmfm.gpu_check --out runs/gpu_check                 # on a CUDA machine (about 5-8 minutes on one H200)
    python -m mmfm.gpu_check --out runs/gpu_check_cpu --tiny      # the same code on the CPU with *-test sizes (CI)

The recipes include `gpt_pretrain --strategy fsdp --devices 1` (entry `gpt_pretrain_fsdp`: FSDP2 on one device).
The report (`<out>/report.json`) holds the device, torch and precision, one entry per recipe (exit code, wall
seconds, its metrics.json, the last lines of its log on failure), the decode check (greedy tokens with and
without the KV-cache fast path, and the largest logit difference), and per model: tokens or samples per
second, FLOPs per step counted by torch's FlopCounterMode, MFU against the device's dense bf16 peak when the
device is known, and peak memory. Failures are recorded, never raised, so that one broken part cannot hide the
others. Nothing here downloads anything.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent

# dense bf16 tensor-core peaks (FLOP/s) of the devices this check expects; others report MFU as None
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}

# recipe -> arguments for a short run (the recipe's own defaults otherwise; --device auto picks the accelerator)
RECIPES = {
    "gpt_pretrain": ["time_budget_s=0"],
    "clip_pretrain": ["train_minutes=3", "--no-probe"],
    "vit_classify": [],
    "dit_train": ["max_minutes=3", "sample_every=0", "classifier={out}/vit_classify/model"],
    "finetune": ["--init", "{out}/vit_classify/model", "--data", "digits", "--method", "lora"],
    "gpt_pretrain_fsdp": ["time_budget_s=0", "--strategy", "fsdp", "--devices", "1"],  # FSDP2 on one device
}
SCRIPTS = {"gpt_pretrain_fsdp": "gpt_pretrain"}  # entry -> recipe file, where they differ
TINY_PRESETS = {"gpt_pretrain": "gpt-test", "clip_pretrain": "clip-test", "vit_classify": "vit-test",
                "dit_train": "dit-test", "gpt_pretrain_fsdp": "gpt-test"}
TINY_EXTRA = {"dit_train": ["limit=64"], "vit_classify": ["limit=64"]}
BENCH = {"gpt": ("gpt2-124m", "gpt-test", 8, 1024), "clip": ("clip-vit-b-32", "clip-test", 128, None),
         "dit": ("dit-s-2", "dit-test", 64, None)}


def device_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "cuda": torch.cuda.is_available()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    bf16=torch.cuda.is_bf16_supported())
    return info


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run_recipe(name: str, out: Path, steps: int, tiny: bool, timeout_s: int) -> dict:
    """One recipe as a subprocess (as a user runs it); never raises."""
    args = [a.format(out=out) for a in RECIPES[name]]
    cmd = [sys.executable, str(ROOT / "recipes" / f"{SCRIPTS.get(name, name)}.py"), "--out", str(out / name), "--max-steps", str(steps), *args]
    if tiny and name in TINY_PRESETS:
        cmd += ["--preset", TINY_PRESETS[name]]
    cmd += TINY_EXTRA.get(name, []) if tiny else []
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr).splitlines()[-25:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e.stderr or "").splitlines()[-25:]
    entry = {"cmd": " ".join(cmd[1:]), "rc": rc, "wall_s": round(time.perf_counter() - start, 1)}
    metrics = out / name / "metrics.json"
    if rc == 0 and metrics.is_file():
        entry["metrics"] = json.loads(metrics.read_text())
    else:
        entry["log_tail"] = tail
    return entry


@torch.no_grad()
def decode_check(device: torch.device, tiny: bool) -> dict:
    """Greedy tokens from the KV-cache fast path equal those of full re-forwarding; logits agree."""
    import mmfm
    from mmfm.models.generation import generate

    torch.manual_seed(0)
    model = mmfm.build_model("gpt-test" if tiny else "gpt2-124m").to(device).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 8), device=device)
    fast = generate(model, prompt, 24, temperature=0, use_cache=True, return_logprobs=True)
    slow = generate(model, prompt, 24, temperature=0, use_cache=False, return_logprobs=True)
    diff = (fast.logprobs - slow.logprobs).abs().max().item()
    return {"tokens_equal": bool(torch.equal(fast.tokens, slow.tokens)), "max_logprob_diff": diff}


def _step_fn(model, inputs: dict):
    """One training step on a synthetic objective (the same FLOPs as the real loss's forward + backward)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        out = model(**inputs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss = sum(o.float().square().mean() for o in outs if torch.is_tensor(o) and o.is_floating_point())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_model(kind: str, device: torch.device, tiny: bool, iters: int) -> dict:
    """Training throughput at the default precision of the device (bf16 autocast on CUDA, fp32 on CPU)."""
    import mmfm
    from torch.utils.flop_counter import FlopCounterMode

    preset, tiny_preset, batch, seq = BENCH[kind]
    model = mmfm.build_model(tiny_preset if tiny else preset).to(device).train()
    batch = 4 if tiny else batch
    inputs = {k: v.to(device) for k, v in model.example_inputs(batch).items()}
    if seq and not tiny:  # a full context for the GPT
        inputs["idx"] = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    step = _step_fn(model, inputs)
    with amp, FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(2):
        with amp:
            step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        with amp:
            step()
    sync()
    dt = (time.perf_counter() - start) / iters
    units = batch * inputs["idx"].shape[1] if "idx" in inputs else batch
    peak = peak_flops(device)
    return {"preset": tiny_preset if tiny else preset, "params": model.num_params(), "batch": batch,
            "per_s": round(units / dt, 1), "unit": "tokens" if "idx" in inputs else "samples",
            "step_ms": round(dt * 1e3, 2), "flops_per_step": flops, "tflops_per_s": round(flops / dt / 1e12, 2),
            "mfu": round(flops / dt / peak, 3) if peak else None,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}


def _write(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))


def _guarded(fn, *a) -> dict:
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001 - the report records every failure and goes on
        log.exception("%s failed", getattr(fn, "__name__", fn))
        return {"error": f"{type(e).__name__}: {e}"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu_check")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tiny", action="store_true", help="*-test sizes (a CPU run of the same code)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per recipe")
    p.add_argument("--iters", type=int, default=10, help="timed training steps per benchmark model")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: recipes,decode,bench")
    p.add_argument("--recipe-timeout", type=int, default=420, help="seconds per recipe")
    p.add_argument("--deadline", type=float, default=0, help=">0: seconds after which no further recipe starts")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device("cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu")
    out, skip = Path(a.out).resolve(), set(filter(None, a.skip.split(",")))
    out.mkdir(parents=True, exist_ok=True)
    report = {"info": device_info(device)}  # FSDP on one device: the recipe entry gpt_pretrain_fsdp
    start = time.perf_counter()
    if "decode" not in skip:
        report["decode"] = _guarded(decode_check, device, a.tiny)
    if "bench" not in skip:
        report["bench"] = {k: _guarded(bench_model, k, device, a.tiny, a.iters) for k in BENCH}
    _write(out, report)
    if "recipes" not in skip:
        report["recipes"] = {}
        for name in RECIPES:  # in order: vit_classify trains the judge dit_train uses, then finetune's backbone
            left = a.deadline - (time.perf_counter() - start) if a.deadline else a.recipe_timeout
            if left < 20:
                report["recipes"][name] = {"skipped": "past --deadline"}
                continue
            report["recipes"][name] = run_recipe(name, out, a.steps, a.tiny, int(min(a.recipe_timeout, left)))
            _write(out, report)
    log.info("wrote %s", out / "report.json")
    return report


if __name__ == "__main__":
    main()
