"""A VLM's image tower adapted with LoRA (mmfm.adapt.lora.inject_lora / merge_lora_inplace): adapters in place,
only they and the rest of the VLM train, and merging gives back a plain tower with the same outputs and keys."""
import pytest
import torch

import mmfm
from mmfm.adapt.lora import inject_lora, merge_lora_inplace
from mmfm.config import ConfigError


def _batch(model, B=2, T=6):
    g = torch.Generator().manual_seed(0)
    c = model.config
    return (torch.randn(B, c.in_chans, c.img_size, c.img_size, generator=g),
            torch.randint(0, c.vocab_size, (B, T), generator=g))


def _step(model, images, idx):
    logits = model(images, idx)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten()).backward()


def test_lora_tower_trains_only_adapters_in_the_tower():
    torch.manual_seed(0)
    model = mmfm.build_model("vlm-test")
    keys = set(model.state_dict())
    inject_lora(model.visual, rank=4)
    tower = {n: p for n, p in model.visual.named_parameters()}
    assert any("lora_A" in n for n in tower) and all(p.requires_grad == ("lora_" in n) for n, p in tower.items())
    assert all(p.requires_grad for p in model.lm.parameters())  # the language model still trains
    images, idx = _batch(model)
    _step(model, images, idx)
    lora_b = [p for n, p in model.visual.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad is None for n, p in model.visual.named_parameters() if "lora_" not in n)
    assert set(model.state_dict()) != keys  # adapters are extra keys until merged


def test_merge_gives_a_plain_tower_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = mmfm.build_model("vlm-test")
    keys = set(model.state_dict())
    inject_lora(model.visual, rank=4)
    with torch.no_grad():  # move the adapters off zero, as training would
        for n, p in model.visual.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.eval()
    images, idx = _batch(model)
    with torch.no_grad():
        before = model(images, idx)
    merge_lora_inplace(model.visual)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(images, idx), before, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "m")
    loaded = mmfm.build_model(str(tmp_path / "m")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, idx), before, atol=1e-5, rtol=1e-5)


def test_rank_zero_is_refused():
    with pytest.raises(ValueError, match="rank"):
        inject_lora(mmfm.build_model("vlm-test").visual, rank=0)


def test_recipe_tower_lora_trains_adapters_and_saves_a_plain_vlm(tmp_path, monkeypatch):
    from test_vlm_recipe import _fake_sources, _recipe

    _fake_sources(monkeypatch)
    recipe, out = _recipe(), tmp_path / "vlm"
    common = ["--max-steps", "3", "--preset", "vlm-test", "patch_size=14", "block_size=96", "n_train=20", "n_val=4",
              "n_test=12", "batch_size=4", "blind=false", "tower_steps=2", "tower_batch=8", "lr=0.05"]
    recipe.main(["--out", str(out), *common, "tower_lora=2"])
    tower = mmfm.build_model(str(out / "tower" / "model")).state_dict()  # the pre-trained tower, before LoRA
    vlm = mmfm.build_model(str(out / "model"))
    assert set(vlm.state_dict()) == set(type(vlm)(vlm.config).state_dict())  # plain keys: no adapter left
    moved = [k for k, v in vlm.visual.state_dict().items() if k in tower and not torch.equal(v, tower[k])]
    assert moved and all(k.endswith(".weight") and ("attn" in k or "mlp" in k) for k in moved)  # only LoRA'd Linears
    with pytest.raises(ConfigError, match="tower_lora"):
        recipe.main(["--out", str(tmp_path / "bad"), *common, "tower_lora=2", "freeze_tower=false"])
