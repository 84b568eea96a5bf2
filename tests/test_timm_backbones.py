"""timm networks as mmfm image backbones (`timm:NAME`): every adaptation method, LoRA targets found by type, weights
from a local file or a timm folder, save/load, and recipes/finetune.py end to end."""
import json

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from test_adapt_recipe import _recipe, _saved_accuracy, _tiny_npz

import mmfm
from mmfm.adapt import build_adapted, is_lora, merge_lora
from mmfm.adapt.lora import lora_targets
from mmfm.config import ConfigError

ARCHS = ["resnet18", "efficientnet_b0", "convnext_atto"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_trains_what_it_should(arch):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    counts = {}
    for method in ("linear", "lora", "full"):
        model = build_adapted(f"timm:{arch}", 4, method, in_chans=1, img_size=32)
        model(x).sum().backward()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
        counts[method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if method == "linear":
            assert trainable == {"head.weight", "head.bias"}
        if method == "lora":
            assert is_lora(model) and all("lora_" in n or ".head." in n for n in trainable)
    assert counts["linear"] < counts["lora"] < counts["full"]


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_found_by_type_include_convolutions_and_never_the_head(arch):
    model = mmfm.build_model(f"timm:{arch}", num_classes=3)
    found = lora_targets(model)
    kinds = {type(model.get_submodule(n)) for n in found}
    assert nn.Conv2d in kinds and "head" not in found
    assert all(model.get_submodule(n).groups == 1 for n in found if isinstance(model.get_submodule(n), nn.Conv2d))


def test_lora_merges_into_a_plain_timm_model_that_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = build_adapted("timm:resnet18", 3, "lora", in_chans=1, img_size=32).eval()
    with torch.no_grad():  # make the adapters non-zero, as after training
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        merged = merge_lora(model)
        assert type(merged).__name__ == "TimmNet" and not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(x), before, atol=1e-4, rtol=1e-4)
        loaded = mmfm.build_model(merged.save_pretrained(tmp_path / "m")).eval()
        assert torch.equal(loaded(x), merged(x))


def _timm_weights(arch="resnet18"):
    torch.manual_seed(1)
    return timm.create_model(arch, pretrained=False, num_classes=10).eval()


def test_weights_from_a_safetensors_or_torch_file(tmp_path):
    ref = _timm_weights()
    save_file(ref.state_dict(), str(tmp_path / "r18.safetensors"))
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)  # pooled features, classifier dropped
        for file in ("r18.safetensors", "r18.pth"):
            model = mmfm.build_model(f"timm:resnet18={tmp_path / file}").eval()
            torch.testing.assert_close(model(x), want)
            assert model.config.image_mean == tuple(timm.models.get_pretrained_cfg("resnet18").mean)


def test_weights_for_grey_images_and_from_a_timm_folder(tmp_path):
    ref = _timm_weights()
    folder = tmp_path / "timm_r18"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10}))
    save_file(ref.state_dict(), str(folder / "model.safetensors"))
    grey = mmfm.build_model(f"timm:{folder}", in_chans=1).eval()
    # timm's adapt_input_conv: the first convolution summed over the RGB channels
    torch.testing.assert_close(grey.body.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), ref.forward_head(ref.forward_features(x.expand(-1, 3, -1, -1)),
                                                             pre_logits=True), atol=1e-4, rtol=1e-4)


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="timm has no model"):
        mmfm.build_model("timm:resnet_nonexistent")
    with pytest.raises(ConfigError, match="not found"):
        mmfm.build_model(f"timm:resnet18={tmp_path / 'missing.pth'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="architecture"):
        mmfm.build_model(f"timm:{tmp_path / 'bad'}")
    wrong = tmp_path / "wrong.safetensors"
    save_file(_timm_weights("resnet10t").state_dict(), str(wrong))
    with pytest.raises(ConfigError, match="do not fit"):
        mmfm.build_model(f"timm:resnet18={wrong}")
    with pytest.raises(ConfigError, match="name a timm model"):
        mmfm.build_model("timm:")


def test_finetune_recipe_with_a_timm_backbone(tmp_path):
    data = _tiny_npz(tmp_path / "tiny.npz", "multiclass", 3, ["a", "b", "c"])
    out = tmp_path / "run"
    metrics = _recipe().main(["--init", "timm:resnet18", "--data", str(data), "--method", "lora", "--out", str(out),
                              "--max-steps", "4", "val_every=2", "batch_size=16", "lora_rank=2", "progress=false",
                              "img_size=16", "in_chans=1"])
    assert metrics["init"] == "timm:resnet18" and metrics["steps"] == 4
    model = mmfm.build_model(out / "model").eval()
    assert model.config.family == "timm" and model.config.num_classes == 3
    assert _saved_accuracy(model, data, lambda logits: logits.argmax(1)) == pytest.approx(metrics["test/accuracy"])
