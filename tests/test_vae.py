"""VAE (diffusers AutoencoderKL) with the patch-GAN loss: shapes, losses, the discriminator's schedule, the recipe."""
import json

import pytest
import torch

from mmfm.models.vae import PatchDiscriminator, build_vae, compression
from mmfm.train.adversarial import adaptive_weight, hinge_d_loss, hinge_g_loss
from mmfm.train.vae import VAETask, reconstruction_metrics


def test_vae_forward_backward_and_discriminator():
    vae = build_vae("vae-test", in_channels=1, sample_size=16)
    assert compression(vae) == 2
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    post = vae.encode(x).latent_dist
    assert post.mean.shape == (2, 4, 8, 8)
    rec = vae.decode(post.sample()).sample
    assert rec.shape == x.shape
    (rec - x).abs().mean().backward()
    assert all(p.grad is not None for n, p in vae.named_parameters() if not n.startswith("decoder.") or "conv_out" in n)
    logits = PatchDiscriminator(1, 8, 2)(x)
    assert logits.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown VAE preset"):
        build_vae("vae-huge")


def test_hinge_losses_and_adaptive_weight():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    w = torch.ones(3, requires_grad=True)
    rec, g = (w * 2).sum(), (w * 0.5).sum()  # gradients 2 and 0.5 per element
    assert adaptive_weight(rec, g, w).item() == pytest.approx(4.0, rel=1e-3)


def test_discriminator_switches_on_after_warmup():
    torch.manual_seed(0)
    task = VAETask(build_vae("vae-test", 1, 16), PatchDiscriminator(1, 8, 2), disc_start=3)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    _, _, before = task.generator_loss(x, step=2)
    _, _, after = task.generator_loss(x, step=3)
    assert "train/g_loss" not in before and {"train/g_loss", "train/d_weight"} <= set(after)
    assert torch.isfinite(after["train/d_weight"]) and after["train/d_weight"] >= 0


def test_lr_schedule_warms_up_and_reaches_its_floor():
    task = VAETask(build_vae("vae-test", 1, 16), PatchDiscriminator(1, 8, 2), lr=1e-3, warmup_steps=2,
                   total_steps=6, min_lr_ratio=0.1)
    (opt_vae, opt_disc), (sched,) = task.configure_optimizers()
    lrs = []
    for _ in range(6):
        lrs.append(opt_vae.param_groups[0]["lr"])
        opt_vae.step()
        sched["scheduler"].step()
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3])  # linear warmup to lr at step 2
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # then the cosine falls every step
    assert opt_vae.param_groups[0]["lr"] == pytest.approx(1e-4)  # to lr * min_ratio at total_steps
    assert opt_disc.param_groups[0]["lr"] == 1e-3 and opt_vae.param_groups[0]["betas"] == (0.5, 0.9)
    # under a time budget the cosine follows the spent fraction: all of it spent -> the floor at once
    timed = VAETask(task.vae, task.disc, lr=1e-3, total_steps=10**6, min_lr_ratio=0.1, progress=lambda: 1.0)
    (opt_vae, _), (sched,) = timed.configure_optimizers()
    sched["scheduler"].step()
    assert opt_vae.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_l2_weight_adds_the_mse():
    task = VAETask(build_vae("vae-test", 1, 16), PatchDiscriminator(1, 8, 2))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.manual_seed(0)
    plain, rec, _ = task.generator_loss(x, step=0)
    task.l2_weight = 0.5
    torch.manual_seed(0)  # the same posterior sample
    with_l2, _, _ = task.generator_loss(x, step=0)
    assert (with_l2 - plain).item() == pytest.approx(0.5 * (rec - x).pow(2).mean().item(), rel=1e-4)


def test_reconstruction_metrics_identity():
    class Identity(torch.nn.Module):  # a perfect autoencoder: PSNR infinite, SSIM 1
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mode": lambda s: x})()})()

        def decode(self, z):
            return type("O", (), {"sample": z})()

    x = torch.rand(4, 1, 16, 16) * 2 - 1
    scores = reconstruction_metrics(Identity(), x)
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-4) and scores["psnr"] > 60


def test_vae_recipe_end_to_end(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL
    from test_dit_train import fake_sources, load_recipe

    from mmfm.train import classify

    monkeypatch.setattr(classify, "DATASETS", fake_sources(n=40))
    vae_train = load_recipe("vae_train")
    out = tmp_path / "vae"
    m = vae_train.main(["--out", str(out), "--preset", "vae-test", "--max-steps", "4", "disc_start=2", "batch_size=8",
                        "limit=16", "disc_width=8", "n_show=4", "warmup_steps=1", "min_lr_ratio=0.1", "lr=1e-3"])
    assert m["steps"] == 4  # VAE steps; the discriminator's (steps 2 and 3) are not counted
    assert m["train/lr_end"] == pytest.approx(1e-3 * 0.1)  # the cosine ends at --max-steps
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/psnr"] == m["test/psnr"] > 0 and 0 < saved["test/ssim"] <= 1
    assert saved["val/psnr"] > 0 and 0 < saved["val/ssim"] <= 1  # 10 % of the 32 train images, held out
    assert (saved["split/train"], saved["split/val"], saved["split/test"]) == (29, 3, 16)
    rest, val = vae_train.split_off(torch.arange(10.0), 0.2, seed=0)
    assert len(val) == 2 and sorted(torch.cat([rest, val]).tolist()) == list(range(10))  # disjoint, complete
    assert (out / "reconstructions.png").stat().st_size > 1000
    vae = AutoencoderKL.from_pretrained(out / "model").eval()
    assert vae.config.latent_channels == 4 and compression(vae) == 2
    with pytest.raises(ValueError, match="min_lr_ratio"):
        vae_train.main(["--out", str(tmp_path / "x"), "--preset", "vae-test", "min_lr_ratio=2"])
    with pytest.raises(ValueError, match="choose a VAE preset"):
        vae_train.main(["--out", str(tmp_path / "x"), "--preset", "dit-test"])
