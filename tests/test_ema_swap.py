"""mmfm's EMA callback (recipes/dit_train.py) against Lightning's weight averaging, which was considered as its
replacement (issue 13) and not taken; mmfm/train/ema.py says why. Here: the recipe's EMA follows its warm-up
formula step by step and resumes exactly from a checkpoint; Lightning's EMAWeightAveraging gives other weights
(no warm-up: its first update copies the weights, then a constant decay); WeightAveraging can be given the warm-up,
but it builds its average in setup() (warning for every task that overrides configure_model, as mmfm's FSDP2
tasks do) and puts the average, not the trained weights, in the checkpoint's state_dict."""
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, WeightAveraging

from mmfm.train.ema import EMA

DECAY, STEPS = 0.9, 5


class _Lin(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 2)

    def training_step(self, batch, _):
        return (self.model(batch[0]) - 1).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Sharded(_Lin):
    def configure_model(self):  # what mmfm.train.strategies.ShardedTask overrides (a no-op without a mesh)
        pass


class _Record(L.Callback):
    """The trained weights at the start and after every optimizer step."""

    def on_train_start(self, trainer, pl_module):
        self.weights = [[p.detach().clone() for p in pl_module.model.parameters()]]

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.weights.append([p.detach().clone() for p in pl_module.model.parameters()])


def _data():
    """STEPS equal batches, so that a resumed run (which restarts its epoch) sees what the uninterrupted one saw."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).repeat(STEPS, 1)  # (4 * STEPS, 3)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4)


def _fit(task, callbacks, tmp_path, max_steps=STEPS, ckpt_path=None):
    L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path, callbacks=callbacks, enable_checkpointing=any(
                  isinstance(c, ModelCheckpoint) for c in callbacks)).fit(task, _data(), ckpt_path=ckpt_path)


def warmup_ema(weights: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """The recipe's EMA written out: e_0 = the initial weights, e_n = d_n e_{n-1} + (1 - d_n) w_n with
    d_n = min(decay, n / (9 + n)) (update n = 1, 2, ...: mmfm's min(decay, (1 + k) / (10 + k)), k = n - 1)."""
    ema = [w.clone() for w in weights[0]]
    for n, step in enumerate(weights[1:], start=1):
        d = min(decay, n / (9 + n))
        ema = [d * e + (1 - d) * w for e, w in zip(ema, step)]
    return ema


def test_recipe_ema_is_the_warmup_formula_and_lightnings_is_not(tmp_path):
    record, ema = _Record(), EMA(DECAY)
    _fit(_Lin(), [record, ema], tmp_path / "mmfm")
    expected = warmup_ema(record.weights, DECAY)
    for e, x in zip(ema.model.parameters(), expected):
        torch.testing.assert_close(e, x, atol=1e-7, rtol=1e-6)

    record, lightning_ema = _Record(), EMAWeightAveraging(decay=DECAY)
    task = _Lin()
    _fit(task, [record, lightning_ema], tmp_path / "lightning")
    averaged = list(task.model.parameters())  # Lightning copies its average into the module at the end of fit
    # its first update copies the weights and later ones use the constant decay: e = w_1, then 0.9 e + 0.1 w
    constant = [w.clone() for w in record.weights[1]]
    for step in record.weights[2:]:
        constant = [DECAY * e + (1 - DECAY) * w for e, w in zip(constant, step)]
    for a, c, x in zip(averaged, constant, warmup_ema(record.weights, DECAY)):
        torch.testing.assert_close(a, c, atol=1e-7, rtol=1e-6)
        assert (a - x).abs().max() > 1e-3  # not the recipe's average


class _WarmupAveraging(WeightAveraging):
    """Lightning's WeightAveraging given the recipe's warm-up: the average is seeded with the initial weights at
    train start (n_averaged = 1) and update n uses d_n = min(decay, n / (9 + n)) (n = n_averaged)."""

    def __init__(self, decay):
        super().__init__(use_buffers=False, multi_avg_fn=self._lerp)
        self.decay = decay

    def _lerp(self, averaged, current, n_averaged):
        n = int(n_averaged)
        torch._foreach_lerp_(averaged, current, 1 - min(self.decay, n / (9 + n)))

    def on_train_start(self, trainer, pl_module):
        if self._average_model.n_averaged == 0:
            self._average_model.update_parameters(pl_module)


def test_lightning_averaging_with_the_warmup_still_differs_where_the_recipe_relies_on_it(tmp_path):
    """The warm-up can be expressed, and then the numbers agree; what remains is where the average is built and
    where it is saved."""
    record, averaging, task = _Record(), _WarmupAveraging(DECAY), _Lin()
    _fit(task, [record, averaging, ModelCheckpoint(tmp_path / "ck", save_last=True)], tmp_path)
    for a, x in zip(task.model.parameters(), warmup_ema(record.weights, DECAY)):
        torch.testing.assert_close(a, x, atol=1e-7, rtol=1e-6)
    # the checkpoint's state_dict is the average; the trained weights moved to current_model_state
    ckpt = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert torch.equal(ckpt["state_dict"]["model.weight"], task.model.weight)
    assert not torch.equal(ckpt["current_model_state"]["model.weight"], task.model.weight)
    # built in setup(), before the strategy places (or shards) the module: a task with configure_model is warned
    with pytest.warns(UserWarning, match="overrides the configure_model"):
        _fit(_Sharded(), [_WarmupAveraging(DECAY)], tmp_path / "sharded", max_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*configure_model.*")
        _fit(_Sharded(), [EMA(DECAY)], tmp_path / "sharded_mmfm", max_steps=1)


def test_recipe_ema_resumes_exactly_from_a_checkpoint(tmp_path):
    """Killed after step 2 and resumed: the same EMA as the uninterrupted run, with the trained weights (not the
    average) in the checkpoint's state_dict."""
    clean = EMA(DECAY)
    _fit(_Lin(), [clean], tmp_path / "clean")
    first = EMA(DECAY)
    _fit(_Lin(), [first, ModelCheckpoint(tmp_path / "ck", every_n_train_steps=2, save_top_k=-1)], tmp_path,
         max_steps=2)
    ckpt_path = tmp_path / "ck" / "epoch=0-step=2.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))
    assert state["updates"] == 2 and torch.equal(state["model"]["weight"], first.model.weight)
    assert not torch.equal(ckpt["state_dict"]["model.weight"], first.model.weight)  # the trained weights
    resumed = EMA(DECAY)
    _fit(_Lin(), [resumed], tmp_path / "resumed", ckpt_path=ckpt_path)
    assert resumed.updates == clean.updates == STEPS
    for a, b in zip(resumed.model.parameters(), clean.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
