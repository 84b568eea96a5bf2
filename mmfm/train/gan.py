"""Class-conditional GAN training: a thin LightningModule with manual optimisation of two optimizers (the shared
AdamW builder, no weight decay), hinge losses from mmfm.train.adversarial, and class-conditional sampling."""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from .adversarial import hinge_d_loss, hinge_g_loss
from .optim import build_optimizer


class GANTask(L.LightningModule):
    """Per batch of (images, labels): `n_dis` discriminator steps (hinge loss, real vs generated images for
    random labels drawn from the batch's), then one generator step (hinge G loss). The discriminator steps its
    raw optimizer, so global_step (and --max-steps) counts generator updates only.

    `aux_weight` > 0 adds an auxiliary classifier term (AC-GAN, Odena et al. 2017, on real images only for D
    as in TAC/ReACGAN): D also minimises cross-entropy of `discriminator.classify` on the real images' labels,
    G that of its samples on the labels it drew them for. 0 leaves the projection alone to carry the label."""

    def __init__(self, generator, discriminator, lr: float = 2e-4, d_lr: float | None = None,
                 betas: tuple[float, float] = (0.0, 0.9), n_dis: int = 1, aux_weight: float = 1.0):
        super().__init__()
        if n_dis < 1:
            raise ValueError(f"n_dis={n_dis}: at least one discriminator step per generator step")
        if aux_weight < 0:
            raise ValueError(f"aux_weight={aux_weight}: must be >= 0")
        self.generator, self.discriminator = generator, discriminator
        self.lr, self.d_lr, self.betas, self.n_dis = lr, d_lr or lr, tuple(betas), n_dis
        self.aux_weight = aux_weight
        self.automatic_optimization = False

    def fake(self, labels: torch.Tensor) -> torch.Tensor:
        z = torch.randn(len(labels), self.generator.config.z_dim, device=labels.device)
        return self.generator(z, labels)  # (B, C, H, W)

    def aux_loss(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """aux_weight * cross-entropy of the discriminator's classifier head on features h; 0 when off."""
        if not self.aux_weight:
            return h.new_zeros(())
        return self.aux_weight * F.cross_entropy(self.discriminator.classify(h), labels)

    def discriminator_losses(self, real: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hinge loss, auxiliary classifier term on the real images)."""
        fake_y = labels[torch.randperm(len(labels), device=labels.device)]  # the data's class mix
        with torch.no_grad():
            fake = self.fake(fake_y)
        d, h_real = self.discriminator, self.discriminator.features(real)
        return hinge_d_loss(d.head(h_real, labels), d(fake, fake_y)), self.aux_loss(h_real, labels)

    def generator_losses(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hinge G loss, auxiliary classifier term on samples drawn for `labels`)."""
        h = self.discriminator.features(self.fake(labels))
        return hinge_g_loss(self.discriminator.head(h, labels)), self.aux_loss(h, labels)

    def discriminator_loss(self, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(self.discriminator_losses(real, labels))

    def generator_loss(self, labels: torch.Tensor) -> torch.Tensor:
        return sum(self.generator_losses(labels))

    def training_step(self, batch, _):
        real, labels = batch
        opt_g, opt_d = self.optimizers()
        for _ in range(self.n_dis):
            d_loss, d_aux = self.discriminator_losses(real, labels)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss + d_aux)
            opt_d.optimizer.step()  # the raw optimizer: not counted in global_step
        self.discriminator.requires_grad_(False)  # the G step needs gradients through D, not into it
        g_loss, g_aux = self.generator_losses(labels)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss + g_aux)
        opt_g.step()
        self.discriminator.requires_grad_(True)
        self.log_dict({"train/d_loss": d_loss, "train/g_loss": g_loss}, prog_bar=True)  # the hinge terms
        if self.aux_weight:
            self.log_dict({"train/d_aux": d_aux, "train/g_aux": g_aux})
        return g_loss + g_aux

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
