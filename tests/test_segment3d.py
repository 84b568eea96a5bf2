"""3-D segmentation (mmfm.seg, recipes/segment.py dims=3): the volumetric patch embedding and its position grid, the
3-D UNETR on an mmfm ViT, crops that stay inside one training slab, and the recipe end to end on synthetic NIfTI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfm.config import ConfigError
from mmfm.nn.embed3d import PatchEmbed3d, resample_pos_3d
from mmfm.registry import build_model
from mmfm.seg import LOBES, CropSet3d, SegVolume, SlabSplit, UNETRConfig, build_unetr, load_segmenter
from test_segment import SMALL, _recipe, mri_dir  # noqa: F401  (mri_dir: the synthetic NIfTI fixture)


def test_patch_embed_3d_tokens_and_grid():
    embed = PatchEmbed3d(patch_size=4, in_chans=1, dim=16)
    x = torch.randn(2, 1, 8, 12, 16)
    assert embed.grid(x.shape[2:]) == (2, 3, 4)
    tokens = embed(x)
    assert tokens.shape == (2, 2 * 3 * 4, 16) and tokens.is_contiguous()
    # raster order D, H, W: token (d, h, w) is the conv output at that patch
    conv = embed.proj(x)  # (B, dim, 2, 3, 4)
    assert torch.allclose(tokens[:, 1 * 12 + 2 * 4 + 3], conv[:, :, 1, 2, 3])
    with pytest.raises(ValueError, match="multiples of the patch size 4"):
        embed(torch.randn(1, 1, 6, 12, 16))


def test_vit_3d_position_grid():
    vit = build_model("vit-test", img_size=16, img_depth=8, patch_size=4, in_chans=1, num_classes=0, spatial_dims=3)
    assert vit.config.grid_shape == (2, 4, 4)
    assert vit.pos_embed.shape == (1, 1 + 2 * 4 * 4, 32)  # class token + D x H x W rows
    assert vit.forward_features(torch.randn(1, 1, 8, 16, 16)).shape == (1, 1 + 32, 32)
    assert vit.forward_features(torch.randn(1, 1, 4, 16, 24)).shape == (1, 1 + 1 * 4 * 6, 32)  # resampled grid
    assert torch.equal(vit._pos(2, 4, 4), vit.pos_embed)
    # trilinear resampling of a table that is linear along W stays linear
    table = torch.arange(1 + 2 * 2 * 2, dtype=torch.float32).view(1, -1, 1)
    out = resample_pos_3d(table, (2, 2, 4), (2, 2, 2), num_prefix_tokens=1)
    assert out.shape == (1, 1 + 16, 1) and out[0, 0, 0] == 0
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        vit(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="img_depth=4 needs spatial_dims=3"):
        build_model("vit-test", img_depth=4)


@pytest.mark.parametrize("patch,shape", [(4, (2, 1, 8, 16, 16)), (2, (1, 1, 4, 8, 12))])
def test_unetr_3d_shape_and_every_parameter_learns(patch, shape):
    torch.manual_seed(0)
    vit = build_model("vit-test", img_size=16, img_depth=8, patch_size=patch, in_chans=1, num_classes=0,
                      spatial_dims=3)
    model = build_unetr(UNETRConfig(num_classes=3, feature_size=4), vit)
    logits = model(torch.randn(shape))
    assert logits.shape == (shape[0], 3, *shape[2:])
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (shape[0], *shape[2:]))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_3d_crops_never_leave_the_training_slabs():
    n = 60
    image = np.repeat(np.arange(n, dtype=np.float32)[:, None, None], 20, 1).repeat(20, 2)  # slice z holds z
    vol = SegVolume("t", image, np.zeros(image.shape, np.int64), ["bg", "a"], (1.0, 1.0, 1.0), "")
    split = SlabSplit(6, 3, 2)(n)
    train = set(split["train"].tolist())
    crops = CropSet3d(vol, split["train"], roi=16, depth=4)
    assert len(crops) == 3 * len([r for r in range(0, n, 13) if r + 6 <= n])  # 3 start positions per full slab
    for i in range(len(crops)):
        img, lab = crops[i]
        assert img.shape == lab.shape == (1, 4, 16, 16)
        z = img[0, :, 0, 0].round().long().tolist()
        assert set(z) <= train and z == list(range(z[0], z[0] + 4)), z  # consecutive, all training slices
        # consecutive training slices with no gap between: one slab
        assert all(a + 1 in train for a in z[:-1])
    with pytest.raises(ValueError, match="roi_depth=7: thicker than every training slab"):
        CropSet3d(vol, split["train"], roi=16, depth=7)


SMALL3D = [a for a in SMALL if not a.startswith(("roi=", "train_slab=", "held_slab=", "gap=", "batch_size="))] + [
    "dims=3", "roi=16", "roi_depth=4", "patch_size=4", "train_slab=6", "held_slab=2", "gap=1", "batch_size=2"]


def test_recipe_brain_lobes_3d_end_to_end(mri_dir, tmp_path):  # noqa: F811
    out = tmp_path / "brain3d"
    m = _recipe().main(["--data", "brain_lobes", "--max-steps", "2", "--out", str(out), f"path={mri_dir}",
                        "size=28", "baseline=false", *SMALL3D])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dims"] == 3 and saved["window"] == [4, 16, 16]
    lobes = [k for k in saved if k.startswith("test/dice/")]
    assert lobes and all(k.split("/")[-1] in LOBES for k in lobes)
    assert saved["test/dice"] == m["test/dice"] and not any(k.startswith("baseline/") for k in saved)
    assert (out / "overlay.png").is_file()
    model, meta = load_segmenter(out / "model")
    assert model.vit.config.spatial_dims == 3
    assert model(torch.zeros(1, 1, 4, 16, 16)).shape == (1, len(LOBES) + 1, 4, 16, 16)


@pytest.mark.parametrize("args,match", [
    (["roi_depth=4"], "roi_depth=4 is for dims=3"),
    (["dims=3", "roi_depth=8"], "thicker than a training slab"),
    (["dims=3", "roi_depth=4", "patch_size=4"], "must be a multiple of 8"),
    (["dims=3", "roi_depth=4", "spatial_dims=2"], "spatial_dims: set by the data"),
])
def test_recipe_refuses_bad_3d_settings(mri_dir, tmp_path, args, match):  # noqa: F811
    with pytest.raises(ConfigError, match=match):
        _recipe().main(["--data", "brain_lobes", "--max-steps", "1", "--out", str(tmp_path), f"path={mri_dir}",
                        "size=28", "train_slab=6", "held_slab=2", "gap=1", *args])
