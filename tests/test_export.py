"""mmfm export: the GPT forward, the CLIP image and text towers and a ViT as ONNX (onnxruntime equals PyTorch to
1e-4 at another batch and sequence length than the export's) and as torch.export programs."""
import json

import numpy as np
import pytest
import torch

import mmfm
from mmfm.cli import main
from mmfm.serve.testing import tiny_clip, tiny_gpt

import onnxruntime as ort


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_export_gpt_onnx_and_program(tmp_path):
    folder = tiny_gpt(tmp_path / "gpt")
    assert main(["export", str(folder), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    model = mmfm.build_model(folder).eval()
    for shape in [(1, 5), (4, 30)]:  # dynamic batch and sequence axes
        idx = torch.randint(0, model.config.vocab_size, shape)
        with torch.no_grad():
            assert np.abs(run(tmp_path / "onnx" / "gpt.onnx", idx) - model(idx).numpy()).max() < 1e-4
    manifest = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert manifest["graphs"]["gpt"]["dynamic_axes"] == {"0": "batch", "1": "seq"}
    assert main(["export", str(folder), "--format", "torch-export", "--out", str(tmp_path / "pt2")]) == 0
    program = torch.export.load(str(tmp_path / "pt2" / "gpt.pt2"))
    idx = torch.randint(0, model.config.vocab_size, (3, 11))
    with torch.no_grad():
        assert torch.allclose(program.module()(idx), model(idx), atol=1e-5)


def test_export_clip_towers_and_vit(tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    main(["export", str(folder), "--out", str(tmp_path / "onnx")])
    model = mmfm.build_model(folder).eval()
    images = torch.randn(3, 3, 32, 32)
    text = model.tokenizer.encode_batch(["a cat", "two dogs on a mat"], max_len=16)[0]
    with torch.no_grad():
        assert np.abs(run(tmp_path / "onnx" / "image.onnx", images) - model.encode_image(images).numpy()).max() < 1e-4
        assert np.abs(run(tmp_path / "onnx" / "text.onnx", text) - model.encode_text(text).numpy()).max() < 1e-4
    vit = mmfm.build_model("vit-test")
    vit.save_pretrained(tmp_path / "vit")
    main(["export", str(tmp_path / "vit"), "--out", str(tmp_path / "vit_onnx")])
    with torch.no_grad():
        assert np.abs(run(tmp_path / "vit_onnx" / "image.onnx", images) - vit.eval()(images).numpy()).max() < 1e-4


def test_export_refuses_what_it_does_not_cover(tmp_path):
    mmfm.build_model("dit-test").save_pretrained(tmp_path / "dit")
    with pytest.raises(ValueError, match="gpt, vit and clip"):
        main(["export", str(tmp_path / "dit"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "dit"), "--format", "tflite", "--out", str(tmp_path / "x")])
