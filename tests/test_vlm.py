"""The vision-language family (mmfm/models/vlm.py) at tiny shapes: both fusions from one config switch, every
parameter trained, the image and only earlier text reach each prediction, padding, save/load, and starting from
trained mmfm parts."""
import pytest
import torch

import mmfm
from mmfm.models import VLM

FUSIONS = ["prefix", "cross"]


def _inputs(model, B=3, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return (torch.randn(B, c.in_chans, c.img_size, c.img_size, generator=g),
            torch.randint(0, c.vocab_size, (B, T), generator=g))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_backward_reaches_every_parameter(fusion):
    torch.manual_seed(0)
    model = mmfm.build_model("vlm-test", fusion=fusion)
    images, idx = _inputs(model)
    logits = model(images, idx)
    assert logits.shape == (3, 8, model.config.vocab_size)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_one_switch_selects_the_fusion():
    prefix, cross = (mmfm.build_model("vlm-test", fusion=f) for f in FUSIONS)
    assert {k for k in cross.state_dict()} - {k for k in prefix.state_dict()}  # cross-attention weights added
    assert all(".cross." in k or ".norm_x." in k for k in set(cross.state_dict()) - set(prefix.state_dict()))
    assert prefix.lm.transformer.blocks[0].cross is None and cross.lm.transformer.blocks[0].cross is not None


@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_image_and_only_earlier_text_reach_a_prediction(fusion):
    torch.manual_seed(0)
    model = mmfm.build_model("vlm-test", fusion=fusion).eval()
    images, idx = _inputs(model)
    with torch.no_grad():
        base = model(images, idx)
        other_image = model(images.roll(1, 0), idx)  # each row gets another row's image
        later = idx.clone()
        later[:, 5:] = (later[:, 5:] + 1) % model.config.vocab_size
        changed_later = model(images, later)
    assert (base - other_image).abs().amax(dim=(1, 2)).min() > 1e-4  # every row looks at its image
    torch.testing.assert_close(changed_later[:, :5], base[:, :5])  # causal over the text
    assert (changed_later[:, 5:] - base[:, 5:]).abs().max() > 1e-4


@pytest.mark.parametrize("fusion", FUSIONS)
def test_right_padding_leaves_the_real_tokens_unchanged(fusion):
    torch.manual_seed(0)
    model = mmfm.build_model("vlm-test", fusion=fusion).eval()
    images, idx = _inputs(model, B=2)
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        padded = model(images, idx, key_padding_mask=mask)
        alone = model(images[1:], idx[1:, :5])
    torch.testing.assert_close(padded[1, :5], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_and_load_are_bit_exact(tmp_path, fusion):
    torch.manual_seed(0)
    model = mmfm.build_model("vlm-test", fusion=fusion).eval()
    model.save_pretrained(tmp_path / "vlm")
    loaded = mmfm.build_model(str(tmp_path / "vlm")).eval()
    assert isinstance(loaded, VLM) and loaded.config == model.config
    images, idx = _inputs(model)
    with torch.no_grad():
        assert torch.equal(model(images, idx), loaded(images, idx))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_from_parts_starts_from_a_trained_tower_and_gpt(fusion):
    torch.manual_seed(0)
    vit = mmfm.build_model("vit-test")  # with a classification head, which the VLM drops
    gpt = mmfm.build_model("gpt-test", pos="rope", norm="rmsnorm", bias=False)
    vlm = VLM.from_parts(vit, gpt, fusion=fusion)
    for name, w in vit.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(vlm.visual.state_dict()[name], w), name
    for name, w in gpt.state_dict().items():
        assert torch.equal(vlm.lm.state_dict()[name], w), name
    images, idx = _inputs(vlm)
    assert vlm(images, idx).shape == (3, 8, gpt.config.vocab_size)
    with pytest.raises(ValueError, match="class-token ViT"):
        VLM.from_parts(mmfm.build_model("vit-test", pool="mean", fc_norm=True), gpt, fusion=fusion)


def test_prefix_that_leaves_no_room_for_text_is_refused():
    with pytest.raises(Exception, match="no room for text"):
        mmfm.build_model("vlm-test", block_size=4)
