"""VAE training (diffusers AutoencoderKL) with latent diffusion's loss: L1 + KL + a hinge patch-GAN term switched on
after a warm-up and balanced by the adaptive weight; PSNR / SSIM (torchmetrics) on held-out images."""
from __future__ import annotations

import lightning as L
import torch

from .adversarial import adaptive_weight, gan_factor, hinge_d_loss, hinge_g_loss
from .optim import build_optimizer, build_scheduler


def kl_per_pixel(posterior, images: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent elements, averaged over the batch, per image pixel (so that
    kl_weight means what it does in latent diffusion, whose losses are sums over pixels)."""
    return posterior.kl().mean() / images[0].numel()


class VAETask(L.LightningModule):
    """Manual optimisation, two Adam optimizers (mmfm's `build_optimizer`, no weight decay). Generator step:
    L1 + l2_weight * MSE + kl_weight * KL (+ from `disc_start` on, disc_weight * adaptive weight * hinge G loss);
    discriminator step (from disc_start on): hinge D loss on real images vs the detached reconstructions.
    The VAE's learning rate follows mmfm's warmup-cosine (`build_scheduler`: linear warmup over `warmup_steps`,
    cosine to `min_lr_ratio` * lr at `total_steps`, or at the end of a time budget when `progress` is given);
    the discriminator's stays constant. global_step counts VAE updates only (the discriminator steps its raw
    optimizer), so --max-steps means VAE steps as in every recipe."""

    def __init__(self, vae, disc, lr: float = 2e-4, disc_lr: float | None = None, kl_weight: float = 1e-6,
                 disc_weight: float = 0.5, disc_start: int = 500, l2_weight: float = 0.0, warmup_steps: int = 0,
                 total_steps: int = 1, min_lr_ratio: float = 1.0, betas=(0.5, 0.9), progress=None):
        super().__init__()
        self.vae, self.disc = vae, disc
        self.lr, self.disc_lr = lr, disc_lr or lr
        self.kl_weight, self.disc_weight, self.disc_start, self.l2_weight = kl_weight, disc_weight, disc_start, l2_weight
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        self.betas, self.progress = tuple(betas), progress
        self.automatic_optimization = False

    def generator_loss(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample  # (B, C, H, W)
        l1 = (rec - x).abs().mean()
        rec_loss = l1 + self.l2_weight * (rec - x).pow(2).mean() if self.l2_weight else l1
        kl = kl_per_pixel(post, x)
        loss = rec_loss + self.kl_weight * kl
        logs = {"train/l1": l1, "train/kl": kl}
        if gan_factor(step, self.disc_start):
            g = hinge_g_loss(self.disc(rec))
            w = adaptive_weight(rec_loss, g, self.vae.decoder.conv_out.weight) * self.disc_weight
            loss = loss + w * g
            logs.update({"train/g_loss": g, "train/d_weight": w})
        return loss, rec, logs

    def training_step(self, batch, _):
        x = batch[0]
        opt_vae, opt_disc = self.optimizers()
        step = self.global_step
        loss, rec, logs = self.generator_loss(x, step)
        logs["train/lr"] = opt_vae.param_groups[0]["lr"]  # this step's
        opt_vae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_vae.step()
        self.lr_schedulers().step()
        if gan_factor(step, self.disc_start):
            d_loss = hinge_d_loss(self.disc(x), self.disc(rec.detach()))
            opt_disc.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_disc.optimizer.step()  # the raw optimizer: not counted in global_step
            logs["train/d_loss"] = d_loss
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(logs)
        return loss

    def configure_optimizers(self):
        opt_vae = build_optimizer(self.vae, self.lr, 0.0, betas=self.betas)
        opt_disc = build_optimizer(self.disc, self.disc_lr, 0.0, betas=(0.5, 0.9))
        sched = build_scheduler(opt_vae, self.warmup_steps, self.total_steps, self.min_lr_ratio, self.progress)
        return [opt_vae, opt_disc], [sched]


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Deterministic reconstructions (the posterior mean), on the VAE's device, returned on the CPU in [-1, 1]."""
    device = next(vae.parameters()).device
    out = [vae.decode(vae.encode(x.to(device)).latent_dist.mode()).sample.clamp(-1, 1).cpu()
           for x in images.split(batch_size)]
    return torch.cat(out)


def reconstruction_metrics(vae, images: torch.Tensor, crop: int | None = None) -> dict:
    """PSNR (dB) and SSIM of the reconstructions of `images` ([-1, 1]) on a [0, 1] scale (torchmetrics); with
    `crop`, both are measured on the centre crop x crop window only (the content of padded images)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from ..diffusion.latent import crop_to

    was = vae.training
    rec = (reconstruct(vae.eval(), images) + 1) / 2
    vae.train(was)
    real = (images.float() + 1) / 2
    if crop is not None:
        rec, real = crop_to(rec, crop), crop_to(real, crop)
    return {"psnr": float(peak_signal_noise_ratio(rec, real, data_range=1.0)),
            "ssim": float(structural_similarity_index_measure(rec, real, data_range=1.0))}
