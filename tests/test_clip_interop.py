"""open_clip <-> mmfm CLIP: embeddings and logits agree both ways (random weights, small custom configs)."""
import dataclasses

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

import mmfm
from mmfm.interop import from_open_clip, to_open_clip
from mmfm.models.clip import CLIP
from mmfm.tokenizers import ByteBPETokenizer


def _perturb(model, std=0.02):
    with torch.no_grad():  # move every tensor off its init so a mis-mapped weight shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def _small_open_clip():
    torch.manual_seed(0)
    return _perturb(open_clip.model.CLIP(
        embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=512, width=32, heads=2, layers=2))).eval()


def _inputs(vocab=512, ctx=16, channels=3, size=32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, channels, size, size, generator=g)
    text = torch.randint(1, vocab - 1, (4, ctx), generator=g)
    for i, end in enumerate([3, 7, 15, 10]):  # end-of-text (the largest id) then zero padding
        text[i, end] = vocab - 1
        text[i, end + 1:] = 0
    return images, text


def _max_diff(a, b):
    return (a - b).abs().max().item()


def test_from_open_clip_matches():
    oc = _small_open_clip()
    clip = from_open_clip(oc).eval()
    images, text = _inputs()
    with torch.no_grad():
        assert _max_diff(oc.encode_image(images, normalize=True), clip.encode_image(images)) < 1e-4
        assert _max_diff(oc.encode_text(text, normalize=True), clip.encode_text(text)) < 1e-4
        logits_oc, _ = oc.get_logits(images, text)
        img, txt, scale = clip(images, text)
        assert _max_diff(logits_oc, scale * img @ txt.T) < 1e-4
    assert clip.config.vision_heads == 2 and clip.config.text_layers == 2 and clip.tokenizer.kind == "clip"


def test_to_open_clip_runs_in_open_clip_and_matches():
    torch.manual_seed(0)
    clip = _perturb(mmfm.build_model("clip-test", vocab_size=512, tokenizer="clip")).eval()
    oc = to_open_clip(clip).eval()
    assert isinstance(oc, open_clip.model.CLIP)
    images, text = _inputs()
    with torch.no_grad():
        out = oc(images, text)  # open_clip's own forward: (image, text, logit_scale)
        img, txt, scale = clip(images, text)
        assert _max_diff(out[0], img) < 1e-4 and _max_diff(out[1], txt) < 1e-4 and _max_diff(out[2], scale) < 1e-5
    back = from_open_clip(oc)
    for k, v in clip.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_to_open_clip_with_the_headline_tokenizer_layout_pools_at_its_eot_id():
    """The headline CLIP: a byte-level BPE (pad 0, end-of-text 1) whose eot is the smallest id, not the largest."""
    captions = ["a photo of a cat", "a diagram of the digit seven", "a dog on grass", "two red birds"] * 5
    tok = ByteBPETokenizer.train(captions, vocab_size=300, min_frequency=1)
    assert tok.eos_id == 1
    torch.manual_seed(0)
    clip = _perturb(mmfm.build_model("clip-test", vocab_size=tok.vocab_size, eot_token_id=tok.eos_id,
                                     tokenizer="bpe", context_length=16)).eval()
    clip.tokenizer = tok
    text, _ = tok.encode_batch(["a photo of a cat", "two red birds", "a dog", "the digit"], max_len=16,
                               pad_to_max=True)
    oc = to_open_clip(clip).eval()
    assert oc.text_pool_type == "eos" and oc.text_eos_id == 1
    with torch.no_grad():
        ours = clip.encode_text(text)
        assert _max_diff(oc.encode_text(text, normalize=True), ours) < 1e-5
        oc.text_pool_type = "argmax"  # what the export used to build: pools at the largest id instead
        assert _max_diff(oc.encode_text(text, normalize=True), ours) > 1e-2
        oc.text_pool_type = "eos"
    back = from_open_clip(oc)
    assert back.config.eot_token_id == 1 and back.tokenizer is None
    with torch.no_grad():
        assert _max_diff(back.eval().encode_text(text), ours) < 1e-6


def test_grayscale_model_converts_to_rgb_open_clip():
    torch.manual_seed(0)
    clip = _perturb(mmfm.build_model("clip-test", vocab_size=512, tokenizer="clip", in_chans=1, img_size=28,
                                     patch_size=7, image_mean=(0.5,), image_std=(0.5,))).eval()
    oc = to_open_clip(clip).eval()
    gray, _ = _inputs(channels=1, size=28)
    with torch.no_grad():
        assert _max_diff(oc.encode_image(gray.expand(-1, 3, -1, -1), normalize=True), clip.encode_image(gray)) < 1e-4


def test_converted_open_clip_model_runs_mmfm_zeroshot():
    from mmfm.eval.zeroshot import encode_images, zeroshot_accuracy
    from mmfm.tokenizers import ClipTokenizer

    oc = open_clip.model.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=1,
                                                            head_width=32),
                              text_cfg=dict(context_length=16, width=32, heads=2, layers=1)).eval()
    clip = from_open_clip(oc)
    assert isinstance(clip.tokenizer, ClipTokenizer) and clip.config.vocab_size == 49408
    images, _ = _inputs()
    feats = encode_images(clip, images)
    acc = zeroshot_accuracy(clip, clip.tokenizer, feats, torch.tensor([0, 1, 0, 1]), ["cat", "dog"],
                            ["a photo of a {}."], ks=(1, 2))
    assert acc["top2"] == 1.0 and 0.0 <= acc["top1"] <= 1.0
    # the same zero-shot weights as open_clip's own tokenizer + encoder
    ids = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat."])[:, :16]
    with torch.no_grad():
        ref = oc.encode_text(ids, normalize=True)
    from mmfm.eval.zeroshot import encode_texts

    assert _max_diff(encode_texts(clip, clip.tokenizer, ["a photo of a cat."]), ref) < 1e-4


def test_quick_gelu_layout_converts_both_ways():  # OpenAI's original weights (open_clip's *-quickgelu models)
    torch.manual_seed(0)
    oc = _perturb(open_clip.model.CLIP(
        embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=512, width=32, heads=2, layers=2), quick_gelu=True)).eval()
    clip = from_open_clip(oc).eval()
    assert clip.config.mlp == "quick_gelu"
    back = to_open_clip(clip).eval()
    assert isinstance(back.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    images, text = _inputs()
    with torch.no_grad():
        for other in (oc, back):
            assert _max_diff(other.encode_image(images, normalize=True), clip.encode_image(images)) < 1e-4
            assert _max_diff(other.encode_text(text, normalize=True), clip.encode_text(text)) < 1e-4
        exact = CLIP(dataclasses.replace(clip.config, mlp="gelu"))  # the same weights with exact GELU
        exact.load_state_dict(clip.state_dict())
        assert _max_diff(exact.eval().encode_image(images), clip.encode_image(images)) > 1e-3  # the switch matters


def test_unsupported_layouts_are_refused():
    oc = open_clip.model.CLIP(embed_dim=16, vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1,
                                                            head_width=16),
                              text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
    oc.visual.transformer.resblocks[0].mlp.gelu = torch.nn.SiLU()
    with pytest.raises(ValueError, match="SiLU"):
        from_open_clip(oc)


@pytest.mark.slow
@pytest.mark.parametrize("name,mlp", [("ViT-B-32", "gelu"), ("ViT-B-32-quickgelu", "quick_gelu")])
def test_vit_b_32_full_size_parity(name, mlp):
    oc = open_clip.create_model(name, pretrained=None).eval()
    clip = from_open_clip(oc).eval()
    assert clip.config == mmfm.get_config("clip-vit-b-32", init_logit_scale=clip.config.init_logit_scale, mlp=mlp)
    tok = open_clip.get_tokenizer("ViT-B-32")
    text = tok(["a diagram", "a dog", "a cat"])
    assert torch.equal(clip.tokenizer.encode_batch(["a diagram", "a dog", "a cat"])[0], text)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert _max_diff(oc.encode_image(images, normalize=True), clip.encode_image(images)) < 1e-4
        assert _max_diff(oc.encode_text(text, normalize=True), clip.encode_text(text)) < 1e-4
        oc2 = to_open_clip(clip).eval()
        assert _max_diff(oc2.encode_text(text), oc.encode_text(text)) < 1e-5
