"""The shared recipe contract on a toy task: flags, overrides, trainer, files written, resume."""
import json
from dataclasses import dataclass

import lightning as L
import pytest
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.train import LossHistory, finish, make_trainer, parse_args, recipe_parser, split_overrides


@dataclass
class ToyTrain:
    lr: float = 0.05
    batch_size: int = 8


class ToyTask(L.LightningModule):
    def __init__(self, model, lr):
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _loader(n=64):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _run(argv):
    args = parse_args(recipe_parser("toy", "vit-test", 10, "runs/toy"), argv)
    cfg = mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=cfg, train=ToyTrain())
    train = ToyTrain(**routed["train"])
    model = mmfm.build_model(args.preset, **routed["model"])
    task = ToyTask(model, train.lr)
    hist = LossHistory(args.out)
    trainer = make_trainer(args, callbacks=[hist], ckpt_every=4, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(task, _loader(), ckpt_path=None)
    return args, finish(args, model, {"train/loss": hist.history["train/loss"][-1][1]}), model


def test_flags_overrides_and_outputs(tmp_path):
    args, metrics, model = _run(["--out", str(tmp_path), "--max-steps", "6", "depth=1", "lr=0.1"])
    assert model.config.depth == 1 and args.max_steps == 6
    assert json.loads((tmp_path / "metrics.json").read_text())["train/loss"] == metrics["train/loss"]
    assert "wall_s" not in metrics or metrics["wall_s"] > 0
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert mmfm.build_model(tmp_path / "model").config.depth == 1


def test_unknown_override_is_clear():
    with pytest.raises(ConfigError, match="closest: lr"):
        split_overrides({"lrr": 1}, model=mmfm.get_config("vit-test"), train=ToyTrain())


def test_malformed_override_exits():
    with pytest.raises(SystemExit):
        parse_args(recipe_parser("toy", "vit-test", 1, "x"), ["depth"])


def test_override_values_parse():
    args = parse_args(recipe_parser("toy", "vit-test", 1, "x"), ["a=3", "b=1e-3", "c=true", "d=gelu", "e=[1,2]"])
    assert args.overrides == {"a": 3, "b": 1e-3, "c": True, "d": "gelu", "e": [1, 2]}
