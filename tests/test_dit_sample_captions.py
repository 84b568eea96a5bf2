"""Free-text sampling of a caption-conditioned DiT folder (dit_train.py --data PAIRS text_encoder=CLIP):
recipes/dit_sample.py --prompt and `mmfm serve`'s /v1/images/generations, pixels and VAE latents, at tiny shapes."""
import base64
import io
import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_dit_captions import tiny_clip
from test_dit_train import load_recipe

import mmfm
from mmfm.diffusion import make_train_scheduler, save_scheduler
from mmfm.diffusion.text import TextConditioner
from mmfm.models.vae import build_vae
from mmfm.serve import create_app, load_services

PROMPTS = ["a red heart", "a smiling cat face", "a blue bar"]


def caption_dit(folder, clip_dir, latent: bool = False):
    """A caption-conditioned DiT folder as dit_train.py writes one (weights, scheduler/, diffusion.json with
    "conditioning": "captions"; a latent one with vae/, latent_scale and image_size), 16 px RGB. Its zero-init
    adaLN and output layers are given random weights, as training would, so that the caption changes samples."""
    text_dim = mmfm.build_model(clip_dir).config.embed_dim
    shape = dict(in_channels=4, input_size=8, patch_size=1) if latent else dict(in_channels=3, input_size=16)
    model = mmfm.build_model("dit-test", depth=1, num_classes=0, text_dim=text_dim, **shape)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    save_scheduler(make_train_scheduler(), folder)
    if latent:
        build_vae("vae-test", in_channels=3, sample_size=16).save_pretrained(folder / "vae")  # 16 px RGB -> 8x8x4
    meta = {"class_names": [], "datasets": ["pairs.csv"], "text_encoder": str(clip_dir), "text_tokens": False,
            "train": {"text_encoder": str(clip_dir)}, "latent_scale": 0.5 if latent else None,
            "image_size": 16 if latent else None, "conditioning": "captions"}
    (folder / "diffusion.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption_dit")
    torch.manual_seed(0)
    tiny_clip(PROMPTS).save_pretrained(root / "clip")  # a char tokenizer over the prompts' characters
    return {"pixel": caption_dit(root / "pixel", root / "clip"),
            "latent": caption_dit(root / "latent", root / "clip", latent=True)}


@pytest.fixture(scope="module")
def dit_sample():
    return load_recipe("dit_sample")


def run(dit_sample, folder, prompts, seeds=(0,)):
    return dit_sample.generate(folder, prompts=list(prompts), seeds=list(seeds), steps=2, sampler="ddim", guidance=3.0)


def grid_px(rows: int, cols: int) -> tuple[int, int]:
    """save_grid's figure in pixels: (1.0 + 0.42 cols) x (0.4 + 0.42 rows) inches at 110 dpi."""
    return int(110 * (1.0 + 0.42 * cols)), int(110 * (0.4 + 0.42 * rows))  # matplotlib floors


def test_dit_sample_writes_a_grid_from_free_text(tmp_path, folders, dit_sample):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a smiling cat face\n\n")
    png = dit_sample.main(["--model", str(folders["pixel"]), "--prompt", "a red heart", "--prompts-file",
                           str(prompts), "--seeds", "3", "--steps", "2", "--sampler", "ddim", "--guidance", "4",
                           "--device", "cpu", "--out", str(tmp_path / "grid.png")])
    assert Image.open(png).size == grid_px(rows=2, cols=3)
    images, names = run(dit_sample, folders["pixel"], PROMPTS[:2], seeds=(0, 1, 2))
    assert images.shape == (6, 3, 16, 16) and names == PROMPTS[:2]
    assert -1 <= float(images.min()) and float(images.max()) <= 1


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_prompts_change_samples_and_a_prompt_and_seed_reproduce(folders, dit_sample, kind):
    images, _ = run(dit_sample, folders[kind], PROMPTS[:2])  # both rows from seed 0's noise
    assert images.shape == (2, 3, 16, 16)  # a latent model is decoded through its vae/ to 16 px RGB
    assert (images[0] - images[1]).abs().max() > 1e-2  # another caption, another image
    again, _ = run(dit_sample, folders[kind], PROMPTS[:1])
    torch.testing.assert_close(again[0], images[0], atol=1e-5, rtol=0)  # the same prompt and seed


def test_caption_model_refusals(tmp_path, folders, dit_sample):
    out = ["--model", str(folders["pixel"]), "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit, match="caption-conditioned: give free text with --prompt"):
        dit_sample.main(out)
    with pytest.raises(SystemExit, match="caption-conditioned .no classes.; describe the images with --prompt"):
        dit_sample.main([*out, "--classes", "heart"])
    with pytest.raises(SystemExit, match="over the text encoder's context length of 32"):
        dit_sample.main([*out, "--prompt", "a red heart " * 4])
    with pytest.raises(SystemExit, match="is empty"):
        dit_sample.main([*out, "--prompt", "  "])
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(SystemExit, match="no prompts in it"):
        dit_sample.main([*out, "--prompts-file", str(tmp_path / "blank.txt")])
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def client(folders):
    loads = []
    original = TextConditioner.load_clip
    TextConditioner.load_clip = staticmethod(lambda path: loads.append(path) or original(path))
    try:
        app = create_app(load_services([folders["pixel"], folders["latent"]]))
    finally:
        TextConditioner.load_clip = staticmethod(original)
    with TestClient(app) as c:
        c.loads, c.services = loads, app.state.services
        yield c


def images_of(response) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in response.json()["data"]]


@pytest.mark.parametrize("model", ["pixel", "latent"])
def test_served_caption_model_samples_free_text(client, model):
    card = client.get(f"/v1/models/{model}").json()
    assert card["conditioning"] == "captions" and card["classes"] == [] and card["image_size"] == 16
    body = {"model": model, "prompt": "a red heart", "n": 2, "steps": 2, "seed": 5, "guidance": 3.0}
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    first = images_of(r)
    assert [(im.size, im.mode) for im in first] == [((16, 16), "RGB")] * 2
    assert r.json()["data"] == client.post("/v1/images/generations", json=body).json()["data"]  # seed reproduces
    other = client.post("/v1/images/generations", json={**body, "prompt": "a smiling cat face"})
    assert other.json()["data"] != r.json()["data"]
    assert len(client.loads) == 2  # one CLIP load per served folder at start-up, none per request
    svc = client.services[model]
    assert next(svc.prompts.clip.parameters()).device == next(svc.model.parameters()).device


@pytest.mark.parametrize("prompt,code,message", [
    ("", None, "is empty"),
    ("   ", None, "is empty"),
    ("a red heart " * 4, "context_length_exceeded", "over the text encoder's context length of 32"),
    ("zebra", None, "cannot be encoded"),  # 'z' is not in the tiny char tokenizer
])
def test_served_caption_model_refuses_bad_prompts(client, prompt, code, message):
    r = client.post("/v1/images/generations", json={"model": "pixel", "prompt": prompt, "steps": 1})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "prompt" and err["code"] == code and message in err["message"]
    assert err["type"] == "invalid_request_error"
