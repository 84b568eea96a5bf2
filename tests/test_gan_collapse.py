"""Regression tests for round five's collapsed GAN: the discriminator passed the hinge margin on every sample
within 9 steps (loss exactly 0, so no gradient) because its spatially summed features gave its logits 49x the
gain of the margin; it froze there and the generator collapsed to one image. The gain test below fails on
round five's summed features (logit ratio 3.5-5.7 where the mean gives about 1). The training check is the
healthy-run symptom on a tiny two-class set (D keeps a gradient, seeds differ); at these tiny shapes (a 4x4
map, 40 steps) it also passes with the sum, so it guards the training step, not the pooling."""
import lightning as L
import torch

import mmfm
from mmfm.models.gan import Discriminator
from mmfm.train.gan import GANTask, generate_images


def two_blobs(n: int, size: int = 16, seed: int = 0):
    """Class 0: a bright 5x5 square near the top left, class 1: near the bottom right, jittered by up to 2
    pixels, on the -1 background (the built-in data's range and its mostly dark images)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.full((n, 1, size, size), -1.0)
    shift = torch.randint(0, 3, (n, 2), generator=gen)
    for i in range(n):
        r, c = (2, 2) if y[i] == 0 else (size // 2, size // 2)
        r, c = r + int(shift[i, 0]), c + int(shift[i, 1])
        x[i, 0, r:r + 5, c:c + 5] = 1.0
    return x, y


class _Losses(L.Callback):
    def __init__(self):
        self.d, self.g = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.d.append(float(trainer.callback_metrics["train/d_loss"]))
        self.g.append(float(trainer.callback_metrics["train/g_loss"]))


def _train(tmp_path, steps: int):
    torch.manual_seed(0)
    g = mmfm.build_model("gan-test", num_classes=2)
    task = GANTask(g, Discriminator(g.config), lr=2e-4, betas=(0.5, 0.9))  # the recipe's defaults
    x, y = two_blobs(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    losses = _Losses()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[losses], default_root_dir=tmp_path)
    trainer.fit(task, loader)
    return task, losses


def test_discriminator_keeps_a_gradient_and_samples_keep_their_noise(tmp_path):
    task, losses = _train(tmp_path, steps=40)
    assert len(losses.d) == 40
    # round five's discriminator: hinge loss exactly 0 (every sample past the margin) from step ~9 on
    assert min(losses.d[-20:]) > 0.05, losses.d
    labels = torch.tensor([0, 1])
    a, b = generate_images(task.generator, labels, seed=0), generate_images(task.generator, labels, seed=1)
    assert (a - b).abs().mean() > 1e-2  # different noise, different images (round five: one image for all)


def test_discriminator_logit_gain_does_not_grow_with_the_feature_map():
    """The cause: the logits pool the last feature map. Summed (round five), the dark background alone moved
    the logits in proportion to the number of positions (49 at 28x28), far past the hinge margin of 1;
    averaged, a blank image gives about the same logits at 16 and 32 pixels (4x the positions)."""
    torch.manual_seed(0)
    d = Discriminator(mmfm.get_config("gan-test", d_width=4, num_classes=2)).eval()
    with torch.no_grad():
        d.linear.bias.zero_()  # logits linear in the pooled features: their ratio is the features' ratio
        y = torch.tensor([0, 1])
        small, big = d(torch.full((2, 1, 16, 16), -1.0), y), d(torch.full((2, 1, 32, 32), -1.0), y)
    ratio = (big / small).abs()
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio  # a sum: about 4x
