"""Every registered *-test preset: builds, runs forward and backward, every parameter gets a gradient,
no NaN, and a saved folder loads back bit-exactly."""
import json

import pytest
import torch

import mmfm

TEST_PRESETS = mmfm.list_models("*-test")


def test_every_family_has_a_test_preset():
    assert {"gpt-test", "vit-test", "clip-test", "dit-test"} <= set(TEST_PRESETS)


def _scalar(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(o.float().pow(2).mean() for o in outs)


@pytest.mark.parametrize("name", TEST_PRESETS)
def test_forward_backward_all_params_get_grad(name):
    model = mmfm.build_model(name)
    with torch.no_grad():  # move off zero-init (adaLN-Zero, zero heads) so every gradient can be non-zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out = model(**model.example_inputs(batch_size=3))
    loss = _scalar(out)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", TEST_PRESETS)
def test_save_load_bit_exact(name, tmp_path):
    model = mmfm.build_model(name).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = mmfm.build_model(tmp_path / "m").eval()
    assert loaded.config == model.config
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    inputs = model.example_inputs()
    a, b = model(**inputs), loaded(**inputs)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(x, y)


def test_load_with_overrides_and_config_is_plain_json(tmp_path):
    model = mmfm.build_model("gpt-test", dropout=0.1)
    model.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["family"] == "gpt" and d["config"]["dropout"] == 0.1
    assert mmfm.build_model(tmp_path, dropout=0.0).config.dropout == 0.0


def test_tied_weights_survive_round_trip(tmp_path):
    model = mmfm.build_model("gpt-test")
    model.save_pretrained(tmp_path)
    loaded = mmfm.build_model(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()


def test_tokenizer_saved_with_model(tmp_path):
    from mmfm.tokenizers import CharTokenizer

    model = mmfm.build_model("gpt-test")
    model.tokenizer = CharTokenizer.train("hello world")
    model.save_pretrained(tmp_path)
    loaded = mmfm.build_model(tmp_path)
    assert loaded.tokenizer.encode("hello") == model.tokenizer.encode("hello")


def test_real_size_presets_have_paper_dims():
    g = mmfm.get_config("gpt2-124m")
    assert (g.n_layer, g.n_head, g.n_embd, g.vocab_size, g.block_size) == (12, 12, 768, 50257, 1024)
    for name, dim, heads in [("vit-ti-16", 192, 3), ("vit-s-16", 384, 6), ("vit-b-16", 768, 12)]:
        c = mmfm.get_config(name)
        assert (c.dim, c.depth, c.n_heads, c.patch_size) == (dim, 12, heads, 16)
    c = mmfm.get_config("clip-vit-b-32")
    assert (c.embed_dim, c.vision_width, c.patch_size, c.text_width, c.text_layers, c.context_length) == (
        512, 768, 32, 512, 12, 77)
    for name, hidden, heads in [("dit-s-2", 384, 6), ("dit-b-2", 768, 12)]:
        c = mmfm.get_config(name)
        assert (c.hidden_size, c.depth, c.num_heads, c.patch_size) == (hidden, 12, heads, 2)


def test_gpt124m_param_count():
    with torch.device("meta"):
        model = mmfm.build_model("gpt2-124m")
    assert abs(model.num_params() - 124_439_808) < 1000  # GPT-2 small, tied head


@pytest.mark.parametrize("name", ["vit-test", "clip-test"])
def test_uint8_and_float64_images_match_the_normalised_float_input(name):
    model = mmfm.build_model(name).eval()
    encode = model.encode_image if name.startswith("clip") else model
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = (model.config.image_mean, model.config.image_std) if name.startswith("clip") else ((0.5,), (0.5,))
    x = (pixels.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        want = encode(x)
        assert torch.allclose(encode(pixels), want, atol=1e-5)
        got64 = encode(x.double())
    assert got64.dtype == torch.float32 and torch.allclose(got64, want, atol=1e-5)


@pytest.mark.parametrize("images, err, msg", [
    (torch.zeros(2, 3, 32, 32, dtype=torch.int32), TypeError, "uint8 pixels or normalised floats, got dtype torch.int32"),
    (torch.zeros(3, 32, 32), ValueError, r"images must be \(B, C, H, W\), got shape \(3, 32, 32\); add the batch"),
    (torch.zeros(2, 3, 0, 0), ValueError, r"images must be \(B, 3, H, W\) .* got shape \(2, 3, 0, 0\)"),
    (torch.zeros(2, 3, 30, 32), ValueError, "divisible by the patch size 8"),
    ([[0.0]], TypeError, "images must be a torch.Tensor"),
])
def test_bad_images_are_refused_clearly(images, err, msg):
    for name in ("vit-test", "clip-test"):
        model = mmfm.build_model(name)
        with pytest.raises(err, match=msg):
            (model.encode_image if name.startswith("clip") else model)(images)


@pytest.mark.parametrize("text, err, msg", [
    (torch.tensor([1, 2, 511]), ValueError, r"text must be \(B, T\) token ids .* got shape \(3,\); add the batch"),
    (torch.zeros(2, 4), TypeError, "integer token ids, got dtype torch.float32"),
    (torch.tensor([[1, 512]]), ValueError, r"token id 512, outside the vocabulary \[0, 512\)"),
    (torch.tensor([[-1, 2]]), ValueError, "token id -1"),
    (torch.zeros(2, 0, dtype=torch.long), ValueError, "B, T >= 1"),
])
def test_bad_text_into_clip_is_refused_clearly(text, err, msg):
    with pytest.raises(err, match=msg):
        mmfm.build_model("clip-test").encode_text(text)
