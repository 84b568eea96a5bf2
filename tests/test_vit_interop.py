"""timm ViT <-> mmfm ViT both ways; the mmfm ViT's position resampling, pooling and channel handling."""
import pytest
import timm
import torch

import mmfm
from mmfm.interop import from_timm_vit, to_timm_vit

LAYOUTS = [
    dict(),  # class token, final norm
    dict(global_pool="avg"),  # timm: fc_norm after mean pooling
    dict(global_pool="avg", fc_norm=False, init_values=0.1, pre_norm=True),  # layer scale, pre-norm
    dict(num_classes=0),  # features only
]


def _timm(**kw):
    torch.manual_seed(0)
    kw = {"num_classes": 10, **kw}
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=2,
                              num_heads=2, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.mark.parametrize("layout", LAYOUTS, ids=["cls", "avg-fcnorm", "avg-ls-prenorm", "features"])
def test_timm_round_trip_parity(layout):
    tv = _timm(**layout)
    vit = from_timm_vit(tv).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = tv(x)
        assert (vit(x) - ref).abs().max() < 1e-4
        assert (to_timm_vit(vit).eval()(x) - ref).abs().max() < 1e-4


def test_mmfm_grayscale_vit_to_timm():
    torch.manual_seed(0)
    vit = mmfm.build_model("vit-mini").eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (to_timm_vit(vit).eval()(x) - vit(x)).abs().max() < 1e-4


def test_unsupported_timm_layout_is_refused():
    tv = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=1,
                           num_heads=2, reg_tokens=2)
    with pytest.raises(ValueError, match="register"):
        from_timm_vit(tv)


def test_vit_other_sizes_channels_and_pooling():
    vit = mmfm.build_model("vit-mini").eval()
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert vit(torch.randn(2, 1, 56, 42)).shape == (2, 10)  # positions resampled to an 8x6 grid
    rgb = mmfm.build_model("vit-test")
    gray = torch.randn(2, 1, 32, 32)
    assert torch.allclose(rgb(gray), rgb(gray.expand(-1, 3, -1, -1)))  # 1 channel repeated
    with pytest.raises(ValueError, match="divisible"):
        vit(torch.randn(1, 1, 30, 28))
    mean = mmfm.build_model("vit-test", pool="mean", class_token=False, fc_norm=True)
    assert mean(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_clip_presets_have_open_clip_dims():
    b32 = mmfm.get_config("clip-vit-b-32")
    assert (b32.embed_dim, b32.vision_width, b32.vision_layers, b32.patch_size, b32.text_width, b32.text_layers,
            b32.context_length, b32.vocab_size) == (512, 768, 12, 32, 512, 12, 77, 49408)
    mini = mmfm.build_model("clip-mini")
    images = torch.randn(2, 1, 28, 28)
    text = torch.randint(0, mini.config.vocab_size - 1, (2, 10))
    text[:, 6] = mini.config.eot_id
    img, txt, scale = mini(images, text)
    assert img.shape == txt.shape == (2, 128) and torch.allclose(img.norm(dim=-1), torch.ones(2))


def _perturb(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.mark.parametrize("mlp", ["gelu_tanh", "swiglu"])
def test_tanh_gelu_and_swiglu_vits_export_exactly_and_come_back(mlp):
    from timm.layers import GluMlp
    from timm.layers.activations import GELUTanh

    vit = _perturb(mmfm.build_model("vit-test", mlp=mlp, num_classes=5))
    tv = to_timm_vit(vit).eval()
    assert isinstance(tv.blocks[0].mlp.act, GELUTanh) if mlp == "gelu_tanh" else isinstance(tv.blocks[0].mlp, GluMlp)
    x = torch.randn(2, vit.config.in_chans, vit.config.img_size, vit.config.img_size)
    with torch.no_grad():
        ref = vit(x)
        assert (tv(x) - ref).abs().max() < 1e-5  # the old export (exact GELU) was 6.9e-4 off for tanh
        back = from_timm_vit(tv).eval()
        assert back.config.mlp == mlp and torch.equal(back(x), ref)


def test_qkv_bias_free_timm_vit_converts_with_zero_bias():
    tv = _perturb(timm.create_model("vit_medium_patch16_gap_256", pretrained=False, img_size=32, embed_dim=64,
                                    depth=2, num_heads=2, num_classes=4))
    assert tv.blocks[0].attn.qkv.bias is None and tv.cls_token is None
    vit = from_timm_vit(tv).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tv(x)
        assert (vit(x) - ref).abs().max() < 1e-5
        assert (vit.transformer.blocks[0].attn.qkv.bias == 0).all()
        assert (to_timm_vit(vit).eval()(x) - ref).abs().max() < 1e-5
