"""CLIP evaluation stays on the device of its inputs. A CPU-only machine has no second device, so a
TorchFunctionMode plays one: tensors moved to "cuda" stay in memory but report cuda:0, factories asked for
cuda make such tensors, and an op that mixes them with (non-scalar) CPU tensors raises as CUDA would."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

import mmfm
from mmfm.data.pairs import PairSet
from mmfm.eval.image_text import evaluate_clip
from mmfm.eval.retrieval import retrieval_recall
from mmfm.eval.zeroshot import topk_accuracy, zeroshot_accuracy
from test_clip_eval import FirstCharModel
from test_clip_user_data import _caption, _write_images
from mmfm.tokenizers import CharTokenizer

CUDA = torch.device("cuda", 0)
MOVES = (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu)


def on_gpu(t) -> bool:
    return getattr(t, "_virtual_cuda", False)


def _is_cuda(dev) -> bool:
    return isinstance(dev, (str, torch.device)) and torch.device(dev).type == "cuda"


class VirtualCuda(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == torch.Tensor.device.__get__:
            return CUDA if on_gpu(args[0]) else torch.device("cpu")
        if func == torch.Tensor.is_cuda.__get__:
            return on_gpu(args[0])
        target = None
        if "device" in kwargs:
            target, kwargs["device"] = _is_cuda(kwargs["device"]), "cpu"
        if func is torch.Tensor.to:
            rest = list(args[1:])
            for i, a in enumerate(rest):
                if isinstance(a, torch.Tensor):  # .to(other): other's device and dtype
                    target, rest[i] = on_gpu(a), a.dtype
                elif isinstance(a, (str, torch.device)):
                    target, rest[i] = _is_cuda(a), "cpu"
            args = (args[0], *rest)
        elif func is torch.Tensor.cuda:
            target, args = True, args[:1]
        elif func is torch.Tensor.cpu:
            target = False
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        sides = {on_gpu(t) for t in tensors if t.dim() > 0}
        if len(sides) > 1 and func not in MOVES:
            raise RuntimeError(f"Expected all tensors to be on the same device, found cuda:0 and cpu ({func})")
        out = func(*args, **kwargs)
        flag = target if target is not None else any(on_gpu(t) for t in tensors)

        def tag(x):
            if isinstance(x, torch.Tensor) and not isinstance(x, torch.nn.Parameter):
                x._virtual_cuda = flag
            return x

        return tree_map(tag, out)


def to_virtual_cuda(model: torch.nn.Module) -> torch.nn.Module:
    for t in itertools.chain(model.parameters(), model.buffers()):
        t._virtual_cuda = True
    return model


def test_the_harness_catches_mixed_devices():
    with VirtualCuda():
        x = torch.randn(3, 2).to("cuda")
        assert x.device == CUDA and torch.zeros(2, device=x.device).device == CUDA
        assert torch.zeros(2).device.type == "cpu"
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(3, 2)
        assert (x + 1).device == CUDA and x.cpu().device.type == "cpu"


def test_topk_accuracy_with_labels_on_another_device():
    with VirtualCuda():
        logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [1, 2, 3], [3, 2, 1]]).to("cuda")
        assert topk_accuracy(logits, torch.tensor([0, 2, 2, 2]), ks=(1, 2)) == {"top1": 0.5, "top2": 0.75}


def test_retrieval_recall_on_the_features_device():
    feats = torch.eye(4)
    with VirtualCuda():
        r = retrieval_recall(feats.to("cuda"), feats.to("cuda"), ks=(1,), groups=torch.tensor([0, 0, 1, 2]))
    assert r == {"i2t_recall@1": 1.0, "t2i_recall@1": 1.0}


def test_zeroshot_follows_the_features_device_and_dtype():
    tok = CharTokenizer("abcdefgh xyz{}")
    labels = torch.tensor([0, 1, 2])
    images = F.one_hot(labels, 8).double()  # float64 features, a float32 classifier
    acc = zeroshot_accuracy(FirstCharModel(tok, pos=2), tok, images, labels, ["a", "b", "c"], ["x {} y"], ks=(1,))
    assert acc == {"top1": 1.0}
    with VirtualCuda():
        model = to_virtual_cuda(FirstCharModel(tok, pos=2))
        acc = zeroshot_accuracy(model, tok, images.float().to("cuda"), labels, ["a", "b", "c"], ["x {} y"], ks=(1,))
    assert acc == {"top1": 1.0}


def test_evaluate_clip_runs_on_the_models_device(tmp_path):
    paths = _write_images(tmp_path / "images", 8)
    pairs = PairSet("open_clip CSV", tmp_path, [str(p) for p in paths], [_caption(i) for i in range(8)],
                    [i % 2 for i in range(8)], ["toy"] * 8,
                    {"toy": {"classnames": ["red", "green"], "prompts": ["a {} square."]}})
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 .")
    model = mmfm.build_model("clip-test", vocab_size=tok.vocab_size, eot_token_id=tok.eos_id, img_size=28,
                             patch_size=7, in_chans=1, image_mean=(0.5,), image_std=(0.5,), context_length=32)
    model.tokenizer = tok
    expected = evaluate_clip(model, pairs)
    with VirtualCuda():
        metrics = evaluate_clip(to_virtual_cuda(model), pairs)
    assert metrics.keys() == expected.keys() and "zeroshot_top1/toy" in metrics and "i2t_class@1" in metrics
    assert metrics == pytest.approx(expected)
