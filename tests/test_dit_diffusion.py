"""The diffusion objective, schedulers (epsilon and v), classifier-free guidance and sampling on a tiny dit-test."""
import pytest
import torch

import mmfm
from mmfm.diffusion import (diffusion_loss, diffusion_target, drop_condition, guide, guided_output, make_sampler,
                            make_train_scheduler, null_condition, sample)


@pytest.fixture
def dit():
    return mmfm.build_model("dit-test", depth=1)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_loss_finite_and_trains(dit, pred):
    sch = make_train_scheduler(pred)
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    y = torch.arange(8) % 10
    opt = torch.optim.Adam(dit.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = diffusion_loss(dit, sch, x0, {"y": y}, 0.2, dit.null_label, torch.Generator().manual_seed(1)).item()
    for _ in range(30):
        loss = diffusion_loss(dit, sch, x0, {"y": y}, 0.2, dit.null_label, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = diffusion_loss(dit, sch, x0, {"y": y}, 0.2, dit.null_label, torch.Generator().manual_seed(1)).item()
    assert torch.isfinite(torch.tensor(first)) and last < first


def test_targets_match_scheduler_definitions():
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    eps = make_train_scheduler("epsilon")
    assert torch.equal(diffusion_target(eps, x0, noise, t), noise)
    v = make_train_scheduler("v_prediction")
    a = v.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * noise - (1 - a).sqrt() * x0  # v = alpha_t eps - sigma_t x0
    torch.testing.assert_close(diffusion_target(v, x0, noise, t), expected)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_oracle_denoiser_recovers_x0(pred, name):
    """A model that returns the exact target for a known x0 must make every sampler land on x0."""
    sch = make_train_scheduler(pred)
    x0 = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    a_all = sch.alphas_cumprod

    def oracle(x, t):
        a = a_all[t.long()].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[pred]

    oracle.parameters = lambda: iter([torch.zeros(1)])
    out = sample(oracle, make_sampler(name, sch.config), x0.shape, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=2e-3, rtol=0)


def test_guidance_one_equals_conditional(dit):
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.1)  # a non-trivial output
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([5, 500, 900]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        cond = dit(x, t, y=y)
        torch.testing.assert_close(guided_output(dit, x, t, {"y": y}, dit.null_label, 1.0), cond)
        unc = dit(x, t, y=torch.full_like(y, dit.null_label))
        torch.testing.assert_close(guided_output(dit, x, t, {"y": y}, dit.null_label, 3.0),
                                   unc + 3.0 * (cond - unc), atol=1e-5, rtol=1e-5)
    assert torch.equal(guide(torch.ones(2), torch.zeros(2), 0.0), torch.zeros(2))


def test_condition_dropout_and_null():
    cond = {"y": torch.arange(1000) % 10, "text": torch.ones(1000, 4)}
    null = null_condition(cond, 10)
    assert (null["y"] == 10).all() and (null["text"] == 0).all()
    out = drop_condition(cond, 0.3, 10, torch.Generator().manual_seed(0))
    dropped = out["y"] == 10
    assert 0.25 < dropped.float().mean() < 0.35
    assert torch.equal(dropped, (out["text"] == 0).all(1))  # the same rows lose label and text
    assert drop_condition(cond, 0.0, 10) is cond


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_sampling_shape_and_seed_determinism(dit, name):
    dit.eval()
    sch = make_sampler(name, make_train_scheduler().config)
    y = torch.tensor([0, 3])
    a = sample(dit, sch, (2, 1, 16, 16), {"y": y}, 2.0, steps=4, generator=torch.Generator().manual_seed(7))
    b = sample(dit, sch, (2, 1, 16, 16), {"y": y}, 2.0, steps=4, generator=torch.Generator().manual_seed(7))
    c = sample(dit, sch, (2, 1, 16, 16), {"y": y}, 2.0, steps=4, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 1, 16, 16) and a.abs().max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_learn_sigma_model_uses_first_channels():
    m = mmfm.build_model("dit-test", depth=1, learn_sigma=True)
    sch = make_train_scheduler()
    loss = diffusion_loss(m, sch, torch.randn(2, 1, 16, 16), {"y": torch.tensor([1, 2])})
    loss.backward()
    out = sample(m.eval(), make_sampler("ddim", sch.config), (2, 1, 16, 16), {"y": torch.tensor([1, 2])}, 1.5, steps=2)
    assert out.shape == (2, 1, 16, 16)


def test_text_conditioning_through_frozen_clip_tower():
    from mmfm.diffusion.text import PromptConditioner, class_captions
    from mmfm.tokenizers import CharTokenizer

    names = ["seven", "cat"]
    captions, prompts = class_captions(names)
    assert prompts == ["a handwritten digit seven", "a silhouette of a cat"] and "a silhouette of a cat" in captions[1]
    clip = mmfm.build_model("clip-test", img_size=28, patch_size=7, in_chans=1, image_mean=(0.5,), image_std=(0.5,),
                            context_length=48)
    clip.tokenizer = CharTokenizer.train("".join(c for caps in captions for c in caps))
    pc = PromptConditioner(clip, names, tokens=True)
    dit = mmfm.build_model("dit-test", depth=1, input_size=28, patch_size=7, num_classes=0, text_dim=pc.text_dim,
                           context_dim=pc.context_dim)
    for m in dit.modules():  # leave the adaLN-Zero start so gradients reach the condition path
        if isinstance(m, torch.nn.Linear) and m.weight.abs().sum() == 0:
            torch.nn.init.normal_(m.weight, std=0.05)
    cond = pc.batch_condition((torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 1, 0])))
    assert cond["text"].shape == (4, pc.text_dim) and cond["context"].shape[:2] == cond["context_mask"].shape
    loss = diffusion_loss(dit, make_train_scheduler(), torch.rand(4, 1, 28, 28) * 2 - 1, cond, 0.5, None)
    loss.backward()
    assert dit.text_proj.weight.grad.abs().sum() > 0 and dit.transformer.blocks[0].cross.kv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
    images = sample(dit.eval(), make_sampler("ddim", make_train_scheduler().config), (2, 1, 28, 28),
                    pc.condition(torch.tensor([0, 1])), 2.0, steps=2)
    assert 0.0 <= pc.retrieval(images, torch.tensor([0, 1])) <= 1.0
