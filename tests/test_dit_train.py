"""EMA callback, sample grids, generation-quality metrics and the DiT recipes end to end on synthetic data."""
import importlib.util
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import mmfm
from mmfm.eval.gen_quality import ClassifierFeatures, fid_floor, frechet_distance
from mmfm.train import classify
from mmfm.train.ema import EMA


class _Lin(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(3, 1)

    def training_step(self, batch, _):
        return self.model(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_ema_tracks_weights_with_warmup_decay():
    task = _Lin()
    ema = EMA(decay=0.9)
    ema.on_fit_start(None, task)
    start = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
    d = ema.current_decay()  # warm-up: min(0.9, 1/10) = 0.1
    assert d == pytest.approx(0.1)
    ema.on_train_batch_end(None, task, None, None, 0)
    for s, e, p in zip(start, ema.model.parameters(), task.model.parameters()):
        torch.testing.assert_close(e, d * s + (1 - d) * p)
        assert not e.requires_grad
    state = ema.state_dict()
    fresh = EMA(decay=0.9)
    fresh.load_state_dict(state)
    fresh.on_fit_start(None, _Lin())  # the restored shadow wins over the new module's weights
    for a, b in zip(fresh.model.parameters(), ema.model.parameters()):
        assert torch.equal(a, b)
    assert fresh.updates == 1


def test_ema_in_trainer(tmp_path):
    task, ema = _Lin(), EMA(decay=0.5)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 3)), batch_size=4)
    L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              default_root_dir=tmp_path, callbacks=[ema]).fit(task, data)
    assert ema.updates == 4
    assert not torch.equal(ema.model.weight, task.model.weight)


def test_fid_floor_sanity():
    vit = mmfm.build_model("vit-test", img_size=28, patch_size=7, in_chans=1, num_classes=4)
    feats = ClassifierFeatures(vit)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(200, 1, 28, 28, generator=g) * 2 - 1
    assert frechet_distance(feats, real, real) == pytest.approx(0.0, abs=1e-3)  # same features -> 0
    floor, half = fid_floor(feats, real)
    assert half.shape == (100, 1, 28, 28) and 0 <= floor
    shifted = (real * 0.3 + 0.6).clamp(-1, 1)  # a different distribution is farther than the floor
    assert frechet_distance(feats, half, shifted) > 5 * floor


def load_recipe(name: str):
    path = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def fake_sources(n=80, seed=0):
    """Two tiny labelled 'datasets' of 28x28 uint8 images: class k is a bright square at a class-dependent place."""
    def make(offset):
        def load():
            rng = np.random.default_rng(seed + offset)
            y = np.arange(n) % 10
            x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
            for i, k in enumerate(y):
                r, c = 2 + 2 * k, 4 + offset
                x[i, r:r + 6, c:c + 6] = 255
            return x, y
        return load
    return {"digits": (make(0), [f"d{i}" for i in range(10)]), "animals": (make(10), [f"a{i}" for i in range(10)])}


@pytest.fixture
def tiny_data(monkeypatch):
    monkeypatch.setattr(classify, "DATASETS", fake_sources())


TINY_VIT = ["--max-steps", "3", "batch_size=16", "dim=32", "depth=1", "n_heads=2"]
TINY_DIT = ["--preset", "dit-test", "input_size=28", "depth=1", "--max-steps", "3", "batch_size=16", "sample_steps=2"]


def test_dit_recipe_end_to_end(tmp_path, tiny_data, monkeypatch, caplog):
    """A fresh clone: no runs/vit/model yet, so the recipe trains its judge first (vit_classify, shrunk here)
    and reports the quality metrics; then dit_sample draws from the saved folder."""
    dit_train, dit_sample = (load_recipe(n) for n in ("dit_train", "dit_sample"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dit_train, "JUDGE_ARGV", TINY_VIT)
    dit_out = tmp_path / "dit"
    with caplog.at_level("INFO"):
        m = dit_train.main(["--out", str(dit_out), *TINY_DIT, "sample_every=2"])
    assert "training it first with `python recipes/vit_classify.py --out runs/vit`" in caplog.text
    assert mmfm.build_model(tmp_path / "runs" / "vit" / "model").config.num_classes == 20
    saved = json.loads((dit_out / "metrics.json").read_text())
    for key in ("cond_accuracy/digits", "fid/digits", "fid_floor/digits", "cond_accuracy/animals", "wall_s",
                "judge_train_s"):
        assert key in saved and saved[key] == m[key]
    assert (dit_out / "samples.png").stat().st_size > 1000 and list((dit_out / "samples").glob("step_*.png"))
    model = mmfm.build_model(dit_out / "model")
    assert model.config.num_classes == 20 and model.config.depth == 1
    png = tmp_path / "s.png"
    dit_sample.main(["--model", str(dit_out / "model"), "--classes", "d3,a1", "--seeds", "2", "--steps", "2",
                     "--out", str(png)])
    assert png.stat().st_size > 500
    from mmfm.eval.gen_quality import main as sweep  # settings are chosen against the train split, test untouched
    rows = sweep(["--model", str(dit_out / "model"), "--classifier", str(tmp_path / "runs" / "vit" / "model"),
                  "--split", "train", "--limit", "20", "--scales", "1,3", "--steps", "2", "--seed", "1"])
    assert [r["guidance_scale"] for r in rows] == [1.0, 3.0]
    assert (dit_out / "guidance_sweep.png").is_file()  # the plot goes beside the rows, not into docs/img
    assert all(0 <= r["cond_accuracy/digits"] <= 1 and r["fid/animals"] >= 0 for r in rows)
    assert json.loads((dit_out / "guidance_sweep.json").read_text()) == rows


def test_dit_recipe_judge_opt_out_and_missing_judge(tmp_path, tiny_data, monkeypatch, caplog):
    dit_train = load_recipe("dit_train")
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(FileNotFoundError, match=f"classifier={missing}.*python recipes/vit_classify.py --out "
                                                f"{missing.parent}.*classifier=none"):
        dit_train.main(["--out", str(tmp_path / "a"), *TINY_DIT, f"classifier={missing}"])
    assert not (tmp_path / "a").exists()  # stopped before training: no checkpoint, nothing half-written
    wrong = tmp_path / "judge3"
    mmfm.build_model("vit-test", img_size=28, patch_size=7, in_chans=1, num_classes=3).save_pretrained(wrong)
    with pytest.raises(mmfm.config.ConfigError, match="has 3 classes; the training data has 20"):
        dit_train.main(["--out", str(tmp_path / "a"), *TINY_DIT, f"classifier={wrong}"])
    assert not (tmp_path / "a").exists()
    with caplog.at_level("WARNING"):
        m = dit_train.main(["--out", str(tmp_path / "b"), *TINY_DIT, "classifier=none", "sample_every=0"])
    assert "classifier=none: conditional accuracy and FID are skipped" in caplog.text
    assert m["steps"] == 3 and not any(k.startswith(("cond_accuracy", "fid")) for k in m)
    assert not (tmp_path / "runs").exists()  # the opt-out trains no judge


def _image_folder(root, n=12):
    """A tiny ImageFolder: two classes, bright square top-left (class 'left') or bottom-right ('right')."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            x = rng.integers(0, 40, (28, 28)).astype(np.uint8)
            x[4 + 14 * k:10 + 14 * k, 4 + 14 * k:10 + 14 * k] = 255
            Image.fromarray(x).save(root / name / f"{i}.png")
    return root


def test_dit_recipe_on_a_users_image_folder(tmp_path):
    dit_train, vit_classify = load_recipe("dit_train"), load_recipe("vit_classify")
    data = _image_folder(tmp_path / "shapes")
    with pytest.raises(mmfm.config.ConfigError, match="default judge .* classifies the built-in"):
        dit_train.main(["--data", str(data), "--out", str(tmp_path / "x"), *TINY_DIT])
    vit_classify.main(["--data", str(data), "--out", str(tmp_path / "vit"), *TINY_VIT, "batch_size=4"])
    m = dit_train.main(["--data", str(data), "--out", str(tmp_path / "dit"), *TINY_DIT, "batch_size=4",
                        f"classifier={tmp_path / 'vit' / 'model'}", "sample_every=0"])
    accuracy = [k for k in m if k.startswith("cond_accuracy/")]
    assert len(accuracy) == 1 and 0.0 <= m[accuracy[0]] <= 1.0 and m["split/train"] > 0
    meta = json.loads((tmp_path / "dit" / "model" / "diffusion.json").read_text())
    assert meta["class_names"] == ["left", "right"]
    assert mmfm.build_model(tmp_path / "dit" / "model").config.num_classes == 2


def test_diffusion_task_cosine_follows_the_time_budget():
    """A budgeted DiT run anneals: with `progress` (a BudgetClock's fraction) the LR reaches the cosine's 5% floor
    when the budget is spent, long before --max-steps; without it, the step count alone sets the LR."""
    from mmfm.train.diffusion import DiffusionTask

    def lr_after(progress, steps):
        task = DiffusionTask(mmfm.build_model("dit-test", depth=1), None, lr=1e-3, warmup_steps=2,
                             total_steps=1000, progress=progress)
        sched = task.configure_optimizers()["lr_scheduler"]["scheduler"]
        for _ in range(steps):
            sched.optimizer.step()
            sched.step()
        return sched.get_last_lr()[0]

    spent = {"f": 0.5}
    assert lr_after(lambda: spent["f"], 5) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))  # half the budget: cos mid
    spent["f"] = 1.0
    assert lr_after(lambda: spent["f"], 5) == pytest.approx(5e-5)  # the budget spent: the floor
    assert lr_after(None, 5) > 9.9e-4  # by steps: 3 of 998 cosine steps
