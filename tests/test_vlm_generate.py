"""VLM generation with an image (mmfm.models.vlm_generate) and recipes/generate.py --image."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmfm
from mmfm.models.generation import sample_next
from mmfm.train.vlm import vqa_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _model(fusion):
    torch.manual_seed(0)
    tok = vqa_tokenizer()
    model = mmfm.build_model("vlm-test", vocab_size=tok.vocab_size, fusion=fusion).eval()
    with torch.no_grad():  # an untrained model repeats one token; larger weights make the steps differ
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.tokenizer = tok
    return model, tok


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_kv_cache_generation_equals_the_full_forward_argmax(fusion):
    model, tok = _model(fusion)
    images = torch.randint(0, 255, (3, 1, 16, 16), dtype=torch.uint8)
    prompts = ["is there a cat?", "how many?", "is there a dog?"]  # two lengths: decoded in two groups
    out = model.generate(images, prompts, 10, temperature=0)
    assert out.tokens.shape[0] == 3
    for i, q in enumerate(prompts):
        ids, want = tok.encode(q), []
        for _ in range(10):  # the module forward over the whole sequence, one argmax at a time
            nxt = int(model(images[i:i + 1], torch.tensor([ids]))[0, -1].argmax())
            if nxt == tok.eos_id:
                break
            ids.append(nxt)
            want.append(nxt)
        assert out[i] == want


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_kv_cache_sampling_equals_sampling_from_the_full_forward(fusion):
    """Seeded sampling draws varied tokens; the same draws from the full forward's logits give the same text."""
    model, tok = _model(fusion)
    image = torch.randint(0, 255, (1, 1, 16, 16), dtype=torch.uint8)
    out = model.generate(image, "is", 12, temperature=1.0, generator=torch.Generator().manual_seed(3))
    gen, ids, want = torch.Generator().manual_seed(3), tok.encode("is"), []
    for _ in range(12):
        nxt = int(sample_next(model(image, torch.tensor([ids]))[:, -1].float(), 1.0, generator=gen))
        if nxt == tok.eos_id:
            break
        ids.append(nxt)
        want.append(nxt)
    assert out[0] == want and len(set(want)) > 2


def test_sampling_is_seeded_and_arguments_are_checked():
    model, tok = _model("prefix")
    images = torch.randint(0, 255, (2, 1, 16, 16), dtype=torch.uint8)
    a = model.generate(images, "is", 6, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(images, "is", 6, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a.tolist() == b.tolist()
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(images, "is", 100, temperature=0)  # past the text room after the image tokens
    with pytest.raises(ValueError, match="images"):
        model.generate(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "is", 2)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(images, "is", 2, temperature=-1)


def _cli():
    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "recipes" / "generate.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_answers_about_an_image(tmp_path, capsys):
    model, tok = _model("prefix")
    model.save_pretrained(tmp_path / "model")
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)  # RGB, another size
    Image.fromarray(pixels).save(tmp_path / "x.png")
    cli = _cli()
    texts = cli.main([str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--prompt", "is there a cat?",
                      "--temperature", "0", "--max-new-tokens", "5"])
    image = torch.as_tensor(np.asarray(Image.fromarray(pixels).convert("L").resize((16, 16))))[None, None]
    want = model.generate(image, "is there a cat?", 5, temperature=0).texts()[0]
    assert texts == ["is there a cat?" + want]
    assert capsys.readouterr().out.strip() == texts[0].strip()
    with pytest.raises(SystemExit):  # a VLM without an image is a usage error
        cli.main([str(tmp_path / "model"), "--prompt", "is"])
