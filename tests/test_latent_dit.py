"""DiT on VAE latents: padding, the latent codec (scale, shapes, decode to the data's size), the recipe's vae=
and export=, dit_sample decoding a latent model, the DiTPipeline export."""
import json

import pytest
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.diffusion.latent import LatentCodec, crop_to, latent_training_data, pad_to
from mmfm.models.vae import build_vae


def test_pad_and_crop_round_trip():
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    p = pad_to(x, 32)
    assert p.shape == (2, 1, 32, 32) and torch.equal(crop_to(p, 28), x)
    assert (p[..., :2, :] == -1).all() and (p[..., :, 30:] == -1).all()  # background border
    assert torch.equal(crop_to(pad_to(torch.ones(1, 1, 5, 7), 9), 5, 7), torch.ones(1, 1, 5, 7))
    with pytest.raises(ValueError, match="cannot pad 28x28 images to 16x16"):
        pad_to(x, 16)


@pytest.fixture
def vae_folder(tmp_path):
    torch.manual_seed(0)
    build_vae("vae-test", in_channels=1, sample_size=16).save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def test_latent_codec_shapes_and_scale(vae_folder):
    codec = LatentCodec.from_folder(vae_folder, image_size=12)
    x = torch.rand(6, 1, 12, 12) * 2 - 1
    with pytest.raises(RuntimeError, match="before the latent scale is known"):
        codec.decode(torch.zeros(1, 4, 8, 8))
    z = codec.encode(x)
    assert z.shape == (6, 4, 8, 8) and codec.latent_size == 8 and codec.channels == 4
    assert z.abs().max().item() == pytest.approx(1.0, rel=1e-5)  # scale = 1 / max |z|: latents in [-1, 1]
    raw = codec.vae.encode(pad_to(x, 16)).latent_dist.mode()
    torch.testing.assert_close(z, raw * codec.scale)  # the posterior mean, scaled
    back = codec.decode(z)
    assert back.shape == x.shape and back.abs().max() <= 1
    torch.testing.assert_close(back, crop_to(codec.vae.decode(raw).sample.clamp(-1, 1), 12))
    with pytest.raises(ValueError, match="images are 20 px but the VAE was trained at 16 px"):
        LatentCodec.from_folder(vae_folder, image_size=20)
    with pytest.raises(FileNotFoundError, match="vae=.*nowhere.*recipes/vae_train.py"):
        LatentCodec.from_folder(vae_folder.parent / "nowhere", image_size=12)


def test_latent_training_data_takes_the_shape_from_the_vae(vae_folder):
    x = torch.rand(4, 1, 12, 12) * 2 - 1
    codec, z, over = latent_training_data(vae_folder, x, {"depth": 1})
    assert over == {"patch_size": 1, "depth": 1, "input_size": 8, "in_channels": 4} and z.shape == (4, 4, 8, 8)
    assert latent_training_data(vae_folder, x, {"patch_size": 2})[2]["patch_size"] == 2
    with pytest.raises(ValueError, match="input_size=28: with vae= the DiT's input_size is the VAE's latent shape"):
        latent_training_data(vae_folder, x, {"input_size": 28})
    with pytest.raises(ValueError, match="encodes 1-channel images; the data has 3"):
        latent_training_data(vae_folder, torch.zeros(2, 3, 12, 12), {})


def test_dit_recipe_on_vae_latents(tmp_path, monkeypatch):
    """vae= trains on latents; export= writes a DiTPipeline folder; dit_sample decodes the latents."""
    from diffusers import DDIMScheduler, DiTPipeline
    from test_dit_train import fake_sources, load_recipe

    from mmfm.diffusion import load_scheduler_config, make_sampler, sample
    from mmfm.train.diffusion import column_noise

    from mmfm.train import classify

    monkeypatch.setattr(classify, "DATASETS", fake_sources(n=40))
    vae = tmp_path / "vae"
    build_vae("vae-test", in_channels=1, sample_size=32).save_pretrained(vae)  # 28 px padded to 32 -> 16x16x4
    judge = tmp_path / "judge"
    mmfm.build_model("vit-test", img_size=28, patch_size=7, in_chans=1, num_classes=20).save_pretrained(judge)
    dit_train, dit_sample = load_recipe("dit_train"), load_recipe("dit_sample")
    out, pipe_dir = tmp_path / "dit", tmp_path / "pipe"
    m = dit_train.main(["--out", str(out), "--preset", "dit-test", "depth=1", "--max-steps", "2", "batch_size=8",
                        "limit=16", "sample_steps=2", "sample_every=0", f"vae={vae}", f"classifier={judge}",
                        "prediction_type=sample", "sampler=ddim", f"export={pipe_dir}"])
    model = mmfm.build_model(out / "model").eval()  # the judge scored decoded 28x28 images, or it would have failed
    assert (model.config.input_size, model.config.in_channels, model.config.patch_size) == (16, 4, 1)
    assert model.config.timestep_freq_shift == 1  # export= picks diffusers' frequencies: the folder is exact
    assert m["steps"] == 2 and 0 <= m["cond_accuracy/digits"] <= 1 and m["fid/animals"] > 0
    meta = json.loads((out / "model" / "diffusion.json").read_text())
    assert meta["train"]["vae"] == str(vae) and meta["latent_scale"] > 0 and meta["image_size"] == 28
    assert (out / "samples.png").stat().st_size > 1000

    # dit_sample decodes a latent model's samples through the VAE saved beside it, cropped to 28 px
    images, names = dit_sample.generate(out / "model", "d3,a1", seeds=[0, 1], steps=2, sampler="ddim", guidance=2.0)
    assert names == ["d3", "a1"] and images.shape == (4, 1, 28, 28) and images.abs().max() <= 1
    codec = LatentCodec.from_folder(out / "model" / "vae", image_size=28, scale=meta["latent_scale"])
    sampler = make_sampler("ddim", load_scheduler_config(out / "model"))
    y = torch.tensor([3, 11]).repeat_interleave(2)  # d3, a1: rows of two seeds
    z = sample(model, sampler, (4, 4, 16, 16), {"y": y}, 2.0, 2, noise=column_noise((4, 16, 16), 2, [0, 1]))
    torch.testing.assert_close(images, codec.decode(z))

    # export=: a diffusers DiTPipeline folder of the trained model that diffusers opens and samples from
    pipe = DiTPipeline.from_pretrained(pipe_dir)
    assert pipe.get_label_ids(["d3", "a1"]) == [3, 11] and isinstance(pipe.scheduler, DDIMScheduler)
    got = pipe([3, 11], guidance_scale=2.0, num_inference_steps=2, generator=torch.Generator().manual_seed(5),
               output_type="pt").images
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))  # the pipeline's draw
    z = sample(model, sampler, (2, 4, 16, 16), {"y": torch.tensor([3, 11])}, 2.0, 2, noise=noise)
    with torch.no_grad():  # the same guided DDIM path; diffusers decodes the whole 32 px frame
        ours = (codec.vae.decode(z / meta["latent_scale"]).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(got, ours, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="vae=.* goes with the built-in datasets="):
        dit_train.main(["--out", str(out), "--data", str(tmp_path), f"vae={vae}"])
    with pytest.raises(ConfigError, match="export=.*decodes latents through a VAE; train on latents with vae="):
        dit_train.main(["--out", str(out), f"export={pipe_dir}"])


@pytest.mark.parametrize("kind", ["ddim", "dpm++"])  # dpm++: the scheduler a default dit_train export= writes
def test_dit_pipeline_export_opens_and_samples_in_diffusers(tmp_path, kind):
    from diffusers import DiTPipeline

    from mmfm.diffusion import make_sampler, make_train_scheduler, sample
    from mmfm.interop.dit_pipeline import export_dit_pipeline, pad_classes

    torch.manual_seed(0)
    dit = mmfm.build_model("dit-test", input_size=8, patch_size=2, in_channels=4, num_classes=3,
                           timestep_freq_shift=1).eval()
    with torch.no_grad():  # off the zero init, so the label embedding matters
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    big = pad_classes(dit)
    torch.testing.assert_close(big(x, t, torch.tensor([2, 3])), dit(x, t, torch.tensor([2, 3])))
    torch.testing.assert_close(big(x, t, torch.tensor([1000, 1000])), dit(x, t, torch.tensor([3, 3])))
    vae = build_vae("vae-test", in_channels=1, sample_size=16).eval()
    sampler = make_sampler(kind, make_train_scheduler("sample").config)
    export_dit_pipeline(dit, sampler, vae, 0.5, ["a", "b", "c"], tmp_path / "pipe")
    pipe = DiTPipeline.from_pretrained(tmp_path / "pipe")
    out = pipe([0, 2], guidance_scale=3.0, num_inference_steps=3, generator=torch.Generator().manual_seed(1),
               output_type="pt").images
    assert out.shape == (2, 1, 16, 16) and 0 <= out.min() and out.max() <= 1
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # the pipeline's draw
    assert type(pipe.scheduler) is type(sampler)
    z = sample(dit, make_sampler(kind, make_train_scheduler("sample").config), (2, 4, 8, 8), {"y": torch.tensor([0, 2])},
               3.0, 3, noise=noise)
    with torch.no_grad():
        ours = (vae.decode(z / 0.5).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(out, ours, atol=1e-4, rtol=1e-4)  # the same guided DDIM path through diffusers
    with pytest.raises(ValueError, match="takes 1 channels; the VAE makes 4"):
        export_dit_pipeline(mmfm.build_model("dit-test"), sampler, vae, 1.0, ["a"], tmp_path / "bad")
