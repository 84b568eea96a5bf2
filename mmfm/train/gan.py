"""Class-conditional GAN training: a thin LightningModule with manual optimisation of two optimizers (the shared
AdamW builder, no weight decay), hinge losses from mmfm.train.adversarial, and class-conditional sampling."""
from __future__ import annotations

import lightning as L
import torch

from .adversarial import hinge_d_loss, hinge_g_loss
from .optim import build_optimizer


class GANTask(L.LightningModule):
    """Per batch of (images, labels): `n_dis` discriminator steps (hinge loss, real vs generated images for
    random labels drawn from the batch's), then one generator step (hinge G loss). The discriminator steps its
    raw optimizer, so global_step (and --max-steps) counts generator updates only."""

    def __init__(self, generator, discriminator, lr: float = 2e-4, d_lr: float | None = None,
                 betas: tuple[float, float] = (0.0, 0.9), n_dis: int = 1):
        super().__init__()
        if n_dis < 1:
            raise ValueError(f"n_dis={n_dis}: at least one discriminator step per generator step")
        self.generator, self.discriminator = generator, discriminator
        self.lr, self.d_lr, self.betas, self.n_dis = lr, d_lr or lr, tuple(betas), n_dis
        self.automatic_optimization = False

    def fake(self, labels: torch.Tensor) -> torch.Tensor:
        z = torch.randn(len(labels), self.generator.config.z_dim, device=labels.device)
        return self.generator(z, labels)  # (B, C, H, W)

    def discriminator_loss(self, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        fake_y = labels[torch.randperm(len(labels), device=labels.device)]  # the data's class mix
        with torch.no_grad():
            fake = self.fake(fake_y)
        return hinge_d_loss(self.discriminator(real, labels), self.discriminator(fake, fake_y))

    def generator_loss(self, labels: torch.Tensor) -> torch.Tensor:
        return hinge_g_loss(self.discriminator(self.fake(labels), labels))

    def training_step(self, batch, _):
        real, labels = batch
        opt_g, opt_d = self.optimizers()
        for _ in range(self.n_dis):
            d_loss = self.discriminator_loss(real, labels)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.optimizer.step()  # the raw optimizer: not counted in global_step
        self.discriminator.requires_grad_(False)  # the G step needs gradients through D, not into it
        g_loss = self.generator_loss(labels)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.discriminator.requires_grad_(True)
        self.log_dict({"train/d_loss": d_loss, "train/g_loss": g_loss}, prog_bar=True)
        return g_loss

    def configure_optimizers(self):
        return [build_optimizer(self.generator, self.lr, 0.0, betas=self.betas, trainer=self._trainer),
                build_optimizer(self.discriminator, self.d_lr, 0.0, betas=self.betas, trainer=self._trainer)]


@torch.no_grad()
def generate_images(generator, labels: torch.Tensor, seed: int = 0, batch_size: int = 250) -> torch.Tensor:
    """One image per label from noise drawn on a CPU generator seeded with `seed` (the same images on any device),
    the generator in eval mode, on its device; returned on the CPU in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
    was = generator.training
    generator.eval()
    out = []
    for y in labels.split(batch_size):
        z = torch.randn(len(y), generator.config.z_dim, generator=gen)
        out.append(generator(z.to(device), y.to(device)).cpu())
    generator.train(was)
    return torch.cat(out)
