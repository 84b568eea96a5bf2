"""Latents scaled by 1/std (unit std, sampled unclipped) beside 1/max|z| (in [-1, 1], clipped like pixels): the
codec's scale, the samplers' clip setting from the scheduler config, old (max) folders unchanged, the recipe's
latent_scale= saved and reloaded."""
import json

import pytest
import torch
from torch import nn

import mmfm
from mmfm.config import ConfigError
from mmfm.diffusion import load_scheduler_config, make_sampler, make_train_scheduler, sample
from mmfm.diffusion.flow import make_flow_scheduler
from mmfm.diffusion.latent import LatentCodec, latent_training_data, pad_to
from mmfm.diffusion.schedule import clips, set_clip_sample
from mmfm.models.vae import build_vae
from test_latent_dit import vae_folder  # noqa: F401  (a tiny saved VAE, 16 px, 1 channel)


class Constant(nn.Module):
    """A 'model' that predicts the same x0 (or velocity) everywhere: 3, past the pixel range."""

    def __init__(self, value: float = 3.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, x, t, **cond):
        return torch.full_like(x, 1.0) * self.value


def test_std_scale_gives_unit_std_and_no_clip(vae_folder):
    x = torch.rand(6, 1, 12, 12) * 2 - 1
    codec = LatentCodec.from_folder(vae_folder, image_size=12, scale_by="std")
    z = codec.encode(x)
    assert z.std().item() == pytest.approx(1.0, rel=1e-5) and not codec.clip_sample
    raw = codec.vae.encode(pad_to(x, 16)).latent_dist.mode()
    torch.testing.assert_close(z, raw / raw.std())
    assert z.abs().max() > 1  # a unit-std set reaches past the pixel range
    by_max = LatentCodec.from_folder(vae_folder, image_size=12)  # the default stays max
    assert by_max.encode(x).abs().max().item() == pytest.approx(1.0, rel=1e-5) and by_max.clip_sample
    torch.testing.assert_close(codec.decode(z), by_max.decode(by_max.encode(x)))  # the same images back
    over = latent_training_data(vae_folder, x, {}, scale_by="std")[0]
    assert over.scale == pytest.approx(codec.scale) and over.scale_by == "std"
    with pytest.raises(ValueError, match="scale_by='mean': choose from"):
        LatentCodec.from_folder(vae_folder, image_size=12, scale_by="mean")


@pytest.mark.parametrize("prediction,kinds", [("sample", ("ddim", "dpm++", "ddpm", "euler")),
                                              ("flow", ("euler", "dpm++"))])
def test_unclipped_config_samples_past_one_with_every_sampler(prediction, kinds):
    model, shape = Constant(), (2, 4, 4, 4)
    for kind in kinds:
        train = make_flow_scheduler() if prediction == "flow" else make_train_scheduler(prediction)
        assert clips(train.config)  # pixels and old folders: clipped
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        clipped = sample(model, make_sampler(kind, train.config), shape, steps=4, noise=noise)
        assert clipped.abs().max() <= 1, kind
        sampler = make_sampler(kind, set_clip_sample(train, False).config)
        assert not clips(sampler.config), kind
        free = sample(model, sampler, shape, steps=4, noise=noise)
        assert free.abs().max() > 1.5, kind  # neither the step's x0 clip nor the final clamp applied


def _old_sample(model, scheduler, shape, noise, steps):
    """mmfm.diffusion.sample as it was before the clip setting (always clamped), unguided."""
    x = noise * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t.expand(shape[0]))
        x = scheduler.step(out, t, x).prev_sample
    return x.clamp(-1, 1)


@pytest.mark.parametrize("kind", ["ddim", "dpm++"])
def test_old_max_folder_samples_as_before(tmp_path, kind):
    """A folder saved before the setting (DDPM config with clip_sample true; flow configs without the key)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    old = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}[kind]
    for train in (make_train_scheduler("sample"), make_flow_scheduler()):
        if kind == "ddim" and "shift" in train.config:
            continue  # flow folders sample with euler or dpm++
        train.save_config(tmp_path / "scheduler")
        config = load_scheduler_config(tmp_path)
        shape, model = (2, 4, 4, 4), Constant()
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        got = sample(model, make_sampler(kind, config), shape, steps=3, noise=noise)
        ref = make_sampler(kind, config) if "shift" in config else old.from_config(config)
        want = _old_sample(model, ref, shape, noise, 3)
        assert (want.abs() == 1).any()  # the clip mattered
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_recipe_latent_scale_std_saves_and_reloads(tmp_path, monkeypatch):
    """latent_scale=std: unit-std latents, clip_sample false in the saved scheduler config; the folder's sampler,
    codec and the exported DiTPipeline reproduce the same unclipped latents and images."""
    from diffusers import DiTPipeline
    from test_dit_train import fake_sources, load_recipe

    from mmfm.train import classify

    monkeypatch.setattr(classify, "DATASETS", fake_sources(n=40))
    vae = tmp_path / "vae"
    torch.manual_seed(0)
    build_vae("vae-test", in_channels=1, sample_size=32).save_pretrained(vae)  # 28 px padded to 32 -> 16x16x4
    dit_train = load_recipe("dit_train")
    out, pipe_dir = tmp_path / "dit", tmp_path / "pipe"
    dit_train.main(["--out", str(out), "--preset", "dit-test", "depth=1", "--max-steps", "2", "batch_size=8",
                    "limit=16", "sample_steps=2", "sample_every=0", f"vae={vae}", "classifier=none", "sampler=ddim",
                    "prediction_type=sample", "latent_scale=std", f"export={pipe_dir}"])
    folder = out / "model"
    meta, config = json.loads((folder / "diffusion.json").read_text()), load_scheduler_config(folder)
    assert meta["train"]["latent_scale"] == "std" and config["clip_sample"] is False and not clips(config)
    model, y = mmfm.build_model(folder).eval(), torch.tensor([3, 11])
    codec = LatentCodec.from_folder(folder / "vae", image_size=28, scale=meta["latent_scale"])
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))  # the pipeline's draw

    pipe = DiTPipeline.from_pretrained(pipe_dir)  # the exported sampler does not clip either
    assert pipe.scheduler.config.clip_sample is False
    assert pipe.vae.config.scaling_factor == pytest.approx(meta["latent_scale"])
    got = pipe([3, 11], guidance_scale=2.0, num_inference_steps=2, generator=torch.Generator().manual_seed(5),
               output_type="pt").images
    z = sample(model, make_sampler("ddim", config), (2, 4, 16, 16), {"y": y}, 2.0, 2, noise=noise)
    with torch.no_grad():  # diffusers decodes the whole 32 px frame
        ours = (codec.vae.decode(z / meta["latent_scale"]).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(got, ours, atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        for p in model.parameters():  # large outputs, so that a clip would show
            p.add_(torch.randn_like(p) * 0.5)
    z = sample(model, make_sampler("ddim", config), (2, 4, 16, 16), {"y": y}, 2.0, 2, noise=noise)
    assert z.abs().max() > 1
    images = codec.decode(z)
    assert images.shape == (2, 1, 28, 28) and images.abs().max() <= 1  # pixels still clamped
    with pytest.raises(ConfigError, match="latent_scale"):
        dit_train.main(["--out", str(out), f"vae={vae}", "latent_scale=mean"])
