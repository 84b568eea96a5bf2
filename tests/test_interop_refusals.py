"""Interop refuses what it cannot convert with a sentence (never an AttributeError or a state-dict dump)."""
import open_clip
import pytest
import timm
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from mmfm.interop import from_hf_gpt2, from_open_clip, from_timm_vit


def test_resnet_open_clip_is_refused_naming_the_tower():
    rn50 = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(ValueError, match="only open_clip CLIP models with a ViT image tower .* ModifiedResNet"):
        from_open_clip(rn50)


def test_deit_distilled_is_refused():
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, depth=1)
    with pytest.raises(ValueError, match="DeiT distilled models are not supported"):
        from_timm_vit(deit)


def test_unpacked_swiglu_and_other_mlps_are_refused():
    from timm.layers import SwiGLU

    tv = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=1,
                           num_heads=2, mlp_layer=SwiGLU, act_layer=nn.SiLU)
    with pytest.raises(ValueError, match="MLP SwiGLU .* not supported"):
        from_timm_vit(tv)
    relu = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=1,
                             num_heads=2, act_layer=nn.ReLU)
    with pytest.raises(ValueError, match="activation ReLU is not supported"):
        from_timm_vit(relu)


def test_not_a_vit_is_refused():
    with pytest.raises(ValueError, match="only timm VisionTransformer models convert, not ResNet"):
        from_timm_vit(timm.create_model("resnet18", pretrained=False))


@pytest.mark.parametrize("flags,match", [(dict(activation_function="relu"), "activation 'relu'"),
                                         (dict(add_cross_attention=True), "add_cross_attention")])
def test_gpt2_configs_without_an_mmfm_equivalent_are_refused(flags, match):
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2, **flags))
    with pytest.raises(ValueError, match=match):
        from_hf_gpt2(hf)
