"""Class-conditional GAN: generator and projection discriminator shapes, spectral norm, the two-optimizer step
(each step moves only its own network; --max-steps counts generator steps), seeded sampling, the recipe."""
import json

import lightning as L
import pytest
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.models.gan import ConditionalBatchNorm2d, Discriminator
from mmfm.train.gan import GANTask, generate_images


def test_generator_and_discriminator_shapes():
    g = mmfm.build_model("gan-test")
    c = g.config
    x = g(**g.example_inputs(3))
    assert x.shape == (3, c.channels, 16, 16) and x.abs().max() <= 1
    assert g.num_params() + sum(b.numel() for b in g.buffers()) == c.estimate_params()
    d = Discriminator(c)
    logits = d(x, torch.tensor([0, 1, 2]))
    assert logits.shape == (3,)
    assert not torch.allclose(logits, d(x, torch.tensor([3, 3, 3])))  # the projection reads the label
    with pytest.raises(ConfigError, match="image_size=18: must be divisible by 4"):
        mmfm.build_model("gan-test", image_size=18)


def test_conditional_batchnorm_scales_and_shifts_by_class():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(3, num_classes=4)
    cbn.init_weights()
    x, y = torch.randn(6, 3, 5, 5), torch.tensor([0, 1, 2, 3, 1, 0])
    plain = torch.nn.BatchNorm2d(3, affine=False)
    torch.testing.assert_close(cbn(x, y), plain(x))  # at init: plain BatchNorm, whatever the label
    with torch.no_grad():
        cbn.gain.weight.normal_()
        cbn.bias.weight.normal_()
    want = plain(x) * cbn.gain.weight[y][:, :, None, None] + cbn.bias.weight[y][:, :, None, None]
    torch.testing.assert_close(cbn(x, y), want)
    cbn(x, y).square().sum().backward()  # only the rows of the labels in the batch get gradients
    assert cbn.gain.weight.grad[:4].abs().sum(1).gt(0).all()
    cbn.gain.weight.grad.zero_()
    cbn(x, torch.full((6,), 2)).sum().backward()
    assert cbn.gain.weight.grad[2].abs().sum() > 0 and cbn.gain.weight.grad[[0, 1, 3]].abs().sum() == 0


def test_generator_reads_the_label_through_every_norm():
    torch.manual_seed(0)
    g = mmfm.build_model("gan-test").eval()
    assert len(g.norms) == 3 and all(isinstance(n, ConditionalBatchNorm2d) for n in g.norms)
    z = torch.randn(1, g.config.z_dim).expand(4, -1)
    with torch.no_grad():
        for conv in g.convs:  # off DCGAN's N(0, 0.02), so the output is not ~0 for every input
            conv.weight.normal_(0.0, 0.3)
        g.fc.weight.normal_(0.0, 0.3)
        g.embed.weight.zero_()  # no label in the input: only the conditional norms can tell the classes apart
        for norm in g.norms:
            norm.gain.weight.normal_(1.0, 0.5)
    x = g(z, torch.arange(4))  # (4, C, H, W), the same noise
    assert all((x[0] - x[i]).abs().max() > 1e-2 for i in range(1, 4))


def test_discriminator_weights_have_unit_spectral_norm():
    d = Discriminator(mmfm.get_config("gan-test", d_width=8))
    x, y = torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)
    for _ in range(30):  # one power iteration per training-mode forward
        d(x, y)
    for conv in (m for m in d.net if isinstance(m, torch.nn.Conv2d)):
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), 2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)


def _step_task():
    torch.manual_seed(0)
    g = mmfm.build_model("gan-test")
    return GANTask(g, Discriminator(g.config), lr=1e-3, n_dis=2)


def test_each_optimizer_moves_only_its_network(tmp_path):
    task = _step_task()
    before_g = [p.detach().clone() for p in task.generator.parameters()]
    before_d = {n: p.detach().clone() for n, p in task.discriminator.named_parameters()}
    data = torch.utils.data.TensorDataset(torch.rand(8, 1, 16, 16) * 2 - 1, torch.arange(8) % 4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=4))
    assert trainer.global_step == 2  # generator updates; 4 discriminator updates are not counted
    assert all(not torch.equal(a, p) for a, p in zip(before_g, task.generator.parameters()))
    assert any(not torch.equal(before_d[n], p) for n, p in task.discriminator.named_parameters())
    assert all(p.requires_grad for p in task.discriminator.parameters())  # frozen only inside the G step

    d_grads = GANTask(task.generator, task.discriminator)  # a G loss leaves D's gradients alone
    task.zero_grad(set_to_none=True)
    task.discriminator.requires_grad_(False)
    d_grads.generator_loss(torch.arange(4)).backward()
    task.discriminator.requires_grad_(True)
    assert all(p.grad is None for p in task.discriminator.parameters())
    assert all(p.grad is not None for p in task.generator.parameters())
    with pytest.raises(ValueError, match="n_dis=0"):
        GANTask(task.generator, task.discriminator, n_dis=0)


def test_generate_images_is_seeded():
    g = mmfm.build_model("gan-test")
    y = torch.arange(6) % 4
    a, b, c = generate_images(g, y, seed=1, batch_size=4), generate_images(g, y, seed=1), generate_images(g, y, seed=2)
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c) and g.training


def test_gan_recipe_end_to_end(tmp_path, monkeypatch):
    from test_dit_train import fake_sources, load_recipe

    from mmfm.train import classify

    monkeypatch.setattr(classify, "DATASETS", fake_sources(n=40))
    judge = tmp_path / "judge"
    mmfm.build_model("vit-test", img_size=28, patch_size=7, in_chans=1, num_classes=20).save_pretrained(judge)
    gan_train = load_recipe("gan_train")
    out = tmp_path / "gan"
    m = gan_train.main(["--out", str(out), "--max-steps", "3", "batch_size=8", "limit=16", "g_width=8", "d_width=4",
                        "z_dim=8", f"classifier={judge}"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == m["steps"] == 3
    for key in ("cond_accuracy/digits", "cond_accuracy/animals", "fid/digits", "fid_floor/animals",
                "raw/cond_accuracy/digits", "train_s"):
        assert key in saved and saved[key] == m[key]
    assert 0 <= saved["cond_accuracy/digits"] <= 1 and saved["fid/digits"] > 0
    assert (out / "samples.png").stat().st_size > 1000
    g = mmfm.build_model(out / "model")
    assert g.config.num_classes == 20 and g.config.image_size == 28 and g.config.g_width == 8
    with pytest.raises(FileNotFoundError, match="classifier=.*nowhere.*vit_classify.py"):
        gan_train.main(["--out", str(out), f"classifier={tmp_path / 'nowhere'}"])
