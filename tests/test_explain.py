"""Explanations: Grad-CAM on a ViT and a timm CNN gives maps of the image's size, the token-to-grid reshape keeps
patch order, recomputed attention equals the fused path's output, rollout, deletion curves, the CLI writes a PNG."""
import numpy as np
import pytest
import torch

import mmfm
from mmfm.explain import attention_probs, deletion_curve, delete_patches, gradcam, rollout, tokens_to_grid


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    m = mmfm.build_model("vit-test", num_classes=3)  # 32 px, 8-px patches: a 4x4 grid
    torch.nn.init.normal_(m.head.weight, std=0.5)
    return m.eval()


def test_tokens_to_grid_keeps_patch_order():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # 1 prefix + a 2x3 grid, dim 3
    grid = tokens_to_grid(tokens, 2, 3)
    assert grid.shape == (2, 3, 2, 3) and torch.equal(grid[1, :, 1, 2], tokens[1, 1 + 1 * 3 + 2])
    with pytest.raises(ValueError, match="grid"):
        tokens_to_grid(tokens, 3, 3)


def test_gradcam_on_vit_has_the_image_size_and_follows_the_evidence(vit):
    x = torch.randn(2, 3, 32, 32)
    maps, cls = gradcam(vit, x)
    assert maps.shape == (2, 32, 32) and 0 <= maps.min() and maps.max() <= 1 and cls.shape == (2,)
    assert torch.equal(cls, vit(x).argmax(1))
    maps48, _ = gradcam(vit, torch.randn(1, 3, 48, 48), target=1)  # another size: positions resampled
    assert maps48.shape == (1, 48, 48)
    assert all(p.grad is None for p in vit.parameters())


def test_gradcam_on_a_timm_cnn():
    net = mmfm.build_model("timm:resnet18", in_chans=1, img_size=32, num_classes=2).eval()
    maps, cls = gradcam(net, torch.randn(2, 1, 32, 32))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_recomputed_attention_matches_the_fused_path(vit):
    blk = vit.transformer.blocks[0]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        probs = attention_probs(blk.attn, x)  # (B, H, T, T)
        v = blk.attn._split(blk.attn.qkv(x).chunk(3, -1)[2])
        y = blk.attn.proj((probs @ v).transpose(1, 2).reshape(2, 17, 32))
        assert torch.allclose(y, blk.attn(x), atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 17))


def test_rollout_maps(vit):
    maps = rollout(vit, torch.randn(3, 3, 32, 32))
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all() and maps.max() <= 1
    with pytest.raises(TypeError, match="ViT"):
        rollout(torch.nn.Linear(2, 2), torch.randn(1, 2))


def test_deletion_curve_on_a_model_that_reads_one_patch():
    """A 'model' whose class is decided by the top-left 8x8 patch: deleting by a map that points there drops
    accuracy at once; random deletion does so only when it happens to hit that patch."""
    class TopLeft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            s = x[:, 0, :8, :8].mean((1, 2)) * self.w
            return torch.stack([-s, s], 1)

    x = torch.full((16, 1, 32, 32), -1.0)
    x[:8, :, :8, :8] = 1.0  # class 1 has a bright top-left patch
    y = torch.tensor([1] * 8 + [0] * 8)
    maps = torch.zeros(16, 32, 32)
    maps[:, :8, :8] = 1.0
    curve = deletion_curve(TopLeft(), x, y, maps, patch=8, steps=4, baseline=-1.0)
    assert curve["attributed"][0] == 1.0 and curve["attributed"][1] == 0.5
    assert curve["auc_attributed"] < curve["auc_random"]
    from mmfm.explain import patch_order

    tied = patch_order(torch.zeros(2, 32, 32), 8, torch.Generator().manual_seed(0))  # an all-zero map: ties random
    assert sorted(tied[0].tolist()) == list(range(16)) and tied[0].tolist() != list(range(16))
    out = delete_patches(x[:1], torch.tensor([[0, 1]]), 1, 8, 0.0)
    assert (out[0, 0, :8, :8] == 0).all() and (out[0, 0, :8, 8:] == -1).all()


@pytest.mark.parametrize("method", ["gradcam", "rollout"])
def test_cli_writes_a_png(tmp_path, vit, method):
    from PIL import Image

    from mmfm.explain.__main__ import main

    folder = vit.save_pretrained(tmp_path / "model")
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(img)
    out = main([str(folder), str(img), "--method", method, "--out", str(tmp_path / "o.png")])
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(img)])  # no config.json


def test_finetune_explain_saves_overlays(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from mmfm.data.medical import save_npz

    r = np.random.default_rng(0)
    images, labels = {}, {}
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        y = np.arange(n) % 2
        x = (r.random((n, 16, 16)) * 60).astype(np.uint8)
        x[y == 1, :8] += 150
        images[split], labels[split] = x, y[:, None]
    data = save_npz(tmp_path / "t.npz", images, labels, "multiclass", ["dark", "bright"])
    if "finetune_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("finetune_recipe",
                                                      Path(__file__).parents[1] / "recipes" / "finetune.py")
        sys.modules["finetune_recipe"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["finetune_recipe"])
    out = tmp_path / "run"
    m = sys.modules["finetune_recipe"].main(["--init", "vit-test", "--data", str(data), "--method", "lora", "--out",
                                             str(out), "--max-steps", "2", "val_every=2", "batch_size=8",
                                             "img_size=16", "explain=3", "lora_rank=2", "progress=false"])
    assert (out / "explain_gradcam.png").stat().st_size > 1000 and (out / "explain_rollout.png").stat().st_size > 1000
    assert 0 < m["trainable_params"] < m["params"]  # counted before the LoRA merge


def test_faithfulness_cli_on_a_tiny_npz(tmp_path, vit):
    import json

    from mmfm.data.medical import save_npz
    from mmfm.explain.faithfulness import main

    r = np.random.default_rng(0)
    images = {s: (r.random((6, 32, 32, 3)) * 255).astype(np.uint8) for s in ("train", "val", "test")}
    labels = {s: (np.arange(6) % 3)[:, None] for s in images}
    data = save_npz(tmp_path / "t.npz", images, labels, "multiclass", ["a", "b", "c"])
    folder = vit.save_pretrained(tmp_path / "model")
    curves = main([str(folder), "--data", str(data), "--steps", "2", "--out", str(tmp_path / "f")])
    saved = json.loads((tmp_path / "f" / "deletion.json").read_text())
    assert set(curves) == {"gradcam", "rollout"} and saved["patch"] == 8 and saved["n"] == 6
    assert len(saved["gradcam"]["attributed"]) == 3 and (tmp_path / "f" / "deletion.png").stat().st_size > 1000
