"""Image-text shards on tiny temp data: writing, reading, the split by image, skipping bad samples, padding."""
import io
import json
import tarfile

import numpy as np
import torch

import mmfm
from mmfm.data.imagetext import LabelSource, build_label_shards, read_classes
from mmfm.data.webdata import (Collate, SkipCounter, image_text_dataset, image_transform, load_all, read_captions,
                               trim_padding)
from mmfm.tokenizers import CharTokenizer

TOK = CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 :,.")


def _source(n=30):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # every image distinct
    labels = np.arange(n) % 3
    return LabelSource("toy", ["cat", "dog", "owl"], ["c", "d", "o"], ["a {name}", "{a_name} here", "the {label}"],
                       ["a photo of a {}."], loader=lambda: (images, labels), train_repeats=2)


def _cfg():
    return mmfm.get_config("clip-test", img_size=28, patch_size=7, in_chans=1, image_mean=(0.5,), image_std=(0.5,))


def test_write_and_read_back(tmp_path):
    out = build_label_shards(tmp_path, sources=(_source(),), test_fraction=0.2, maxcount=10)
    assert len(out["train"]) == 5 and len(out["test"]) == 1  # 2 x 24 train samples, 6 test
    classes = read_classes(tmp_path)
    assert classes["toy"]["classnames"] == ["cat", "dog", "owl"]
    cfg = _cfg()
    test = load_all(str(tmp_path / "test-*.tar"), image_transform(cfg), Collate(TOK, 32), batch_size=4)
    assert test["images"].shape == (6, 1, 28, 28) and test["text"].shape[0] == 6
    assert test["images"].min() >= -1 and test["images"].max() <= 1
    for cap, lab in zip(test["captions"], test["labels"].tolist()):
        assert cap in _source().captions(lab)
    assert set(test["sources"]) == {"toy"}
    assert len(read_captions(str(tmp_path / "train-*.tar"))) == 48 * 4  # txt + 3 json captions each


def _image_ids(paths):
    ids = {}
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    from PIL import Image

                    ids[m.name] = int(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))[0, 0])
    return ids


def test_split_is_by_image(tmp_path):
    out = build_label_shards(tmp_path, sources=(_source(),), test_fraction=0.3, maxcount=100)
    train, test = set(_image_ids(out["train"]).values()), set(_image_ids(out["test"]).values())
    assert train and test and not train & test
    assert len(train | test) == 30


def test_undecodable_sample_is_skipped_and_counted(tmp_path):
    build_label_shards(tmp_path, sources=(_source(),), test_fraction=0.2, maxcount=100)
    bad = tmp_path / "bad-000000.tar"
    with tarfile.open(tmp_path / "test-000000.tar") as src, tarfile.open(bad, "w") as dst:
        corrupted = False
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".png") and not corrupted:
                data, corrupted = b"not a png", True
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    counter = SkipCounter()
    ds = image_text_dataset(str(bad), image_transform(_cfg()), Collate(TOK, 32), 100, train=False, handler=counter)
    batches = list(ds)
    assert counter.count == 1 and sum(len(b["captions"]) for b in batches) == 5
    assert batches[-1]["skipped"] == (-1, 1)  # (worker id, skipped so far) travels with the batches


def test_train_stream_shuffles_repeats_and_splits_by_worker(tmp_path):
    build_label_shards(tmp_path, sources=(_source(),), test_fraction=0.2, maxcount=10)
    ds = image_text_dataset(str(tmp_path / "train-*.tar"), image_transform(_cfg(), train=True), Collate(TOK, 32),
                            8, train=True, shuffle=20)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    seen = []
    for i, batch in enumerate(loader):
        assert batch["images"].shape == (8, 1, 28, 28)
        seen.append(batch)
        if i == 13:  # more than one pass of 48 samples: the stream repeats
            break
    assert len(seen) == 14
    json.dumps([b["captions"] for b in seen])


def test_trimming_padding_is_exact():
    model = mmfm.build_model("clip-test", vocab_size=TOK.vocab_size, eot_token_id=TOK.eos_id, context_length=24).eval()
    ids, mask = TOK.encode_batch(["a cat", "the dog is here"], max_len=24, pad_to_max=True)
    short = trim_padding(ids, mask)
    assert short.shape == (2, 16)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), model.encode_text(short), atol=1e-6)


def test_exact_duplicate_images_are_dropped_before_the_split(tmp_path):
    src = _source()
    images, labels = src.loader()
    images[7] = images[3]  # an exact copy could otherwise be in train and test at once
    src.loader = lambda: (images, labels)
    out = build_label_shards(tmp_path, sources=(src,), test_fraction=0.5, maxcount=100)
    assert out["counts"]["toy"]["duplicates_dropped"] == 1
    assert out["counts"]["toy"]["train"] + out["counts"]["toy"]["test"] == 29
