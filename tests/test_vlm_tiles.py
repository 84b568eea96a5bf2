"""Tiled image input for the VLM (AnyRes-style, `tiles`/`tile_tokens`) and the recipe's tower pre-training on the
train split's source images: each tile's tokens are the tower run on that crop alone, the tile embeddings are
trained and saved, and the pre-training never sees a val or test source image."""
import json

import numpy as np
import pytest
import torch

import mmfm
from mmfm.models import VLM
from test_vlm_recipe import _fake_sources, _recipe


def _tiled(tile_tokens, fusion="prefix"):
    torch.manual_seed(0)
    return mmfm.build_model("vlm-test", img_size=32, tiles=2, tile_tokens=tile_tokens, fusion=fusion).eval()


@pytest.mark.parametrize("tile_tokens", ["all", "cls"])
def test_each_tiles_tokens_are_the_tower_on_that_crop(tile_tokens):
    model = _tiled(tile_tokens)
    assert model.config.vision().img_size == 16
    per_tile = 1 if tile_tokens == "cls" else (16 // 8) ** 2 + 1
    assert model.config.image_tokens == 4 * per_tile
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        got = model.image_embeddings(images)  # (2, 4 * per_tile, E)
        assert got.shape == (2, 4 * per_tile, model.config.n_embd)
        for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # raster order
            crop = images[:, :, 16 * r:16 * r + 16, 16 * c:16 * c + 16]
            alone = model.visual.forward_features(crop)[:, :per_tile]  # (2, per_tile, D)
            want = model.projector(alone) + model.tile_embed[k]
            torch.testing.assert_close(got[:, k * per_tile:(k + 1) * per_tile], want)


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_tiled_model_trains_every_parameter_and_saves(tmp_path, fusion):
    model = _tiled("cls", fusion).train()
    images = torch.randn(3, 1, 32, 32)
    idx = torch.randint(0, model.config.vocab_size, (3, 8))
    logits = model(images, idx)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"
    base = mmfm.build_model("vlm-test", img_size=16, fusion=fusion)  # one tile of the same tower
    assert (model.num_params() - base.num_params() == model.config.estimate_params() - base.config.estimate_params()
            == 4 * model.config.n_embd)  # the tile embeddings
    model.save_pretrained(tmp_path / "vlm")
    loaded = mmfm.build_model(str(tmp_path / "vlm")).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(images, idx), loaded(images, idx))


def test_tiles_are_checked():
    with pytest.raises(Exception, match="divisible by tiles"):
        mmfm.build_model("vlm-test", img_size=30, tiles=4)
    with pytest.raises(ValueError, match="32x32"):
        _tiled("cls").image_embeddings(torch.zeros(1, 1, 48, 48))


def test_from_parts_tiles_a_cell_sized_tower():
    vit = mmfm.build_model("vit-test")
    gpt = mmfm.build_model("gpt-test", pos="rope", norm="rmsnorm", bias=False)
    vlm = VLM.from_parts(vit, gpt, tiles=2, tile_tokens="cls")
    assert vlm.config.img_size == 2 * vit.config.img_size and vlm.config.image_tokens == 4
    assert torch.equal(vlm.visual.patch_embed.proj.weight, vit.patch_embed.proj.weight)


def test_tower_pretraining_sees_only_train_sources(tmp_path, monkeypatch):
    _fake_sources(monkeypatch)
    recipe = _recipe()
    seen = []
    real = recipe.cell_classification_set

    def spy(src, size):
        seen.append(set(src.ids.tolist()))
        return real(src, size)

    monkeypatch.setattr(recipe, "cell_classification_set", spy)
    out = tmp_path / "vlm"
    recipe.main(["--out", str(out), "--max-steps", "2", "--preset", "vlm-test", "img_size=56", "patch_size=7",
                 "tiles=2", "tile_tokens=cls", "tower_steps=3", "tower_batch=8", "block_size=96", "n_train=20",
                 "n_val=4", "n_test=12", "batch_size=4", "blind=false", "tokenizer=bpe"])
    from mmfm.data.vqa import VQAConfig, vqa_sets
    sets = vqa_sets(VQAConfig(n_train=20, n_val=4, n_test=12))
    train_ids, held_out = set(sets["train"].src.ids), set(sets["val"].src.ids) | set(sets["test"].src.ids)
    assert seen[0] == train_ids and not seen[0] & held_out  # trained on the train split's sources only
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["tower_steps"] == 3 and 0.0 <= saved["tower/val_accuracy"] <= 1.0
    assert saved["train_s"] >= saved["tower_s"] > 0
    assert (out / "tower" / "loss.png").is_file() and (out / "tower" / "model" / "config.json").is_file()
    assert mmfm.build_model(str(out / "model")).tokenizer.kind == "bpe"  # the trained BPE is saved with the VLM


def test_pretrained_tower_lands_in_the_vlm_and_a_wrong_tower_is_refused(tmp_path, monkeypatch):
    _fake_sources(monkeypatch)
    recipe = _recipe()
    torch.manual_seed(1)
    vit = mmfm.build_model("vit-test", img_size=28, patch_size=7, in_chans=1, num_classes=20)
    vit.save_pretrained(tmp_path / "vit")
    args = ["--max-steps", "1", "--preset", "vlm-test", "img_size=56", "patch_size=7", "tiles=2", "tile_tokens=cls",
            "vision_width=" + str(vit.config.dim), "vision_layers=" + str(vit.config.depth),
            "vision_heads=" + str(vit.config.n_heads), "block_size=96", "n_train=8", "n_val=4", "n_test=4",
            "batch_size=4", "blind=false", "freeze_tower=true", f"tower={tmp_path / 'vit'}"]
    recipe.main(["--out", str(tmp_path / "a"), *args])
    vlm = mmfm.build_model(str(tmp_path / "a" / "model"))
    for name, w in vit.state_dict().items():  # frozen: still the saved tower after training
        if not name.startswith("head."):
            assert torch.equal(vlm.visual.state_dict()[name], w), name
    with pytest.raises(Exception, match="does not fit"):
        recipe.main(["--out", str(tmp_path / "b"), *args, "patch_size=14"])
    with pytest.raises(Exception, match="choose one"):  # task=caption takes the tower flags too (its own tests)
        recipe.main(["--out", str(tmp_path / "c"), "task=caption", "tower_steps=3", f"tower={tmp_path / 'vit'}"])
