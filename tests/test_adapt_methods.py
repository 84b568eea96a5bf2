"""Adaptation methods on ViT and CLIP backbones, from presets and saved folders: what trains, shapes,
LoRA merge + save + reload, from-scratch initialisation."""
import pytest
import torch

import mmfm
from mmfm.adapt import LORA_TARGETS, build_adapted, count_params, is_lora, load_backbone, merge_lora


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(1)
    return {name: mmfm.build_model(name).save_pretrained(root / name) for name in ("vit-test", "clip-test")}


def _init(name, folders, saved):
    return str(folders[name]) if saved else name


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("saved", [False, True], ids=["preset", "folder"])
@pytest.mark.parametrize("name", ["vit-test", "clip-test"])
def test_linear_trains_only_the_head(name, saved, folders):
    model = build_adapted(_init(name, folders, saved), 5, "linear")
    assert sorted(_trainable(model)) == ["head.bias", "head.weight"]
    assert model.config.num_classes == 5
    out = model(torch.randn(3, 1, 48, 40))  # one channel, another size: repeated and resampled by the ViT
    assert out.shape == (3, 5)


@pytest.mark.parametrize("saved", [False, True], ids=["preset", "folder"])
@pytest.mark.parametrize("name", ["vit-test", "clip-test"])
def test_lora_trains_adapters_and_head(name, saved, folders):
    model = build_adapted(_init(name, folders, saved), 4, "lora", lora=dict(lora_rank=2))
    names = _trainable(model)
    assert is_lora(model) and names
    assert all("lora_" in n or ".head." in n for n in names)
    assert any(n.endswith("head.weight") for n in names)
    for target in LORA_TARGETS:
        assert any(f"{target}.lora_A" in n for n in names), target
    counts = count_params(model)
    assert 0 < counts["trainable_params"] < counts["params"] / 2
    loss = model(torch.randn(2, 3, 32, 32)).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["vit-test", "clip-test"])
def test_full_trains_everything_and_keeps_pretrained_weights(name, folders):
    model = build_adapted(str(folders[name]), 3, "full")
    assert all(p.requires_grad for p in model.parameters())
    source = mmfm.build_model(folders[name])
    source = source.visual if name == "clip-test" else source
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)
    scratch = load_backbone(str(folders[name]), from_scratch=True)
    assert scratch.config == source.config
    assert not torch.equal(scratch.patch_embed.proj.weight, source.patch_embed.proj.weight)


@pytest.mark.parametrize("name", ["vit-test", "clip-test"])
def test_lora_merge_save_reload_same_outputs(name, folders, tmp_path):
    model = build_adapted(str(folders[name]), 6, "lora", lora=dict(lora_rank=4))
    with torch.no_grad():  # make the adapters and head non-trivial
        for n, p in model.named_parameters():
            if "lora_B" in n or ".head." in n:
                p.normal_(std=0.2)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)
    merged = merge_lora(model)
    assert not is_lora(merged) and not any("lora" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "m")
    reloaded = mmfm.build_model(tmp_path / "m").eval()
    assert reloaded.config.num_classes == 6
    torch.testing.assert_close(reloaded(x), expected, atol=1e-5, rtol=1e-4)


def test_unknown_method_and_backbone_are_clear():
    with pytest.raises(ValueError, match="choose from"):
        build_adapted("vit-test", 2, "prompt")
    with pytest.raises(TypeError, match="no image backbone"):
        build_adapted("gpt-test", 2, "linear")
