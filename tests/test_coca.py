"""CoCa (loss=coca in recipes/clip_pretrain.py): a caption decoder on the CLIP (decoder_layers > 0), trained with
open_clip's CoCaLoss. The loss against open_clip's, gradients, causality, save/load and the recipe on tiny shards."""
import json

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import CoCaLoss as OpenClipCoCaLoss

import mmfm
from mmfm.losses.contrastive import ClipLoss, CocaLoss
from mmfm.train.clip import ClipTask, ClipTrain
from test_siglip import run_tiny_recipe


def _coca(**kw):
    torch.manual_seed(0)
    return mmfm.build_model("clip-test", decoder_layers=2, **kw).eval()


def test_coca_loss_equals_open_clips_and_its_parts():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 16), dim=-1), F.normalize(torch.randn(4, 16), dim=-1)
    logits, labels = torch.randn(4, 7, 30), torch.randint(1, 30, (4, 7))
    labels[:, 5:] = 0  # padding, ignored
    scale = torch.tensor(14.0)
    got = CocaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)(img, txt, logits, labels, scale)
    want = OpenClipCoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)(img, txt, logits, labels, scale)
    assert torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1])
    assert torch.allclose(got[0], ClipLoss()(img, txt, scale))
    assert torch.allclose(got[1], 2 * F.cross_entropy(logits[:, :5].reshape(-1, 30), labels[:, :5].reshape(-1)))


def test_forward_coca_matches_the_clip_and_every_parameter_gets_a_gradient():
    model = _coca().train()
    x = model.example_inputs(3)
    image, text, scale, logits = model.forward_coca(**x)
    assert logits.shape == (3, model.config.context_length, model.config.vocab_size)
    clip_image, clip_text, _ = model(**x)
    assert torch.allclose(image, clip_image) and torch.allclose(text, clip_text)  # the towers are the CLIP's
    contrastive, caption = CocaLoss(pad_id=0)(image, text, logits, x["text"], scale)
    (contrastive + caption).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_decoder_is_causal():
    model = _coca()
    x = model.example_inputs(2)
    changed = x["text"].clone()
    changed[:, 9] = (changed[:, 9] + 1) % (model.config.vocab_size - 1)
    a, b = model.forward_coca(x["images"], x["text"])[3], model.forward_coca(x["images"], changed)[3]
    assert torch.equal(a[:, :10], b[:, :10])  # logits at t <= 9 predict token t from tokens < t
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    other = model.forward_coca(torch.randn_like(x["images"]), x["text"])[3]
    assert not torch.allclose(a[:, 0], other[:, 0])  # the first token already sees the image


def test_greedy_caption_follows_the_decoders_argmax():
    model = _coca()
    images = model.example_inputs(2)["images"]
    ids = model.caption(images, max_len=6)
    assert ids.shape[0] == 2 and 1 <= ids.shape[1] <= 6
    logits = model.forward_coca(images, torch.cat([ids, ids[:, :1]], 1))[3]  # one extra token: the last is unused
    eot = model.config.eot_id
    for row in range(2):
        n = ids[row].tolist().index(eot) + 1 if eot in ids[row] else ids.shape[1]
        assert torch.equal(logits[row, :n].argmax(-1), ids[row, :n])
    with pytest.raises(ValueError, match="no caption decoder"):
        mmfm.build_model("clip-test").caption(images)


def test_save_load_is_bit_exact(tmp_path):
    model = _coca()
    model.save_pretrained(tmp_path / "m")
    back = mmfm.build_model(str(tmp_path / "m")).eval()
    assert back.config.decoder_layers == 2
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = model.example_inputs(2)
    assert torch.equal(model.forward_coca(**x)[3], back.forward_coca(**x)[3])
    assert mmfm.build_model("clip-test").decoder is None  # decoder_layers=0: a plain CLIP


def test_task_refuses_mismatched_loss_and_model():
    with pytest.raises(ValueError, match="decoder_layers > 0"):
        ClipTask(mmfm.build_model("clip-test"), ClipTrain(loss="coca"), 10)
    with pytest.raises(ValueError, match="loss=coca"):
        ClipTask(_coca(), ClipTrain(loss="clip"), 10)
    with pytest.raises(ValueError, match="loss=coca only"):
        ClipTask(mmfm.build_model("clip-test"), ClipTrain(coca_caption_weight=1.0), 10)


def test_recipe_trains_coca_and_the_folder_reloads_with_the_decoder(tmp_path):
    out = run_tiny_recipe(tmp_path, "coca")
    model = mmfm.build_model(str(out / "model"))
    assert model.config.decoder_layers == model.config.text_layers == 2 and model.decoder is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train/caption_loss"] > 0 and metrics["train/contrastive_loss"] > 0
    assert metrics["train/loss"] == pytest.approx(metrics["train/caption_loss"] + metrics["train/contrastive_loss"])
    assert "zeroshot_top1/toy" in metrics


def test_open_clip_export_refuses_the_decoder_and_the_suggested_copy_exports():
    from mmfm.interop.open_clip import to_open_clip
    from mmfm.models.clip import CLIP

    clip = _coca()
    with pytest.raises(ValueError, match="decoder_layers=2"):
        to_open_clip(clip)
    plain = CLIP(clip.config.replace(decoder_layers=0))
    missing, unexpected = plain.load_state_dict(clip.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("decoder.") for k in unexpected)
    images = torch.randn(2, clip.config.in_chans, clip.config.img_size, clip.config.img_size)
    oc = to_open_clip(plain.eval()).eval()
    with torch.no_grad():
        torch.testing.assert_close(oc.encode_image(images, normalize=True), clip.encode_image(images),
                                   atol=1e-4, rtol=1e-4)
