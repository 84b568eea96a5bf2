"""A user's image-text data through recipes/clip_pretrain.py: open_clip CSV/TSV (default and custom keys and
separator), a folder of images with same-named .txt captions, webdataset shards of jpg + txt; classes from
classes.json or from repeated captions; every bad input fails with a message naming what is wrong, before
--out is written."""
import csv
import io
import logging
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfm.data.formats import DataFormatError
from mmfm.data.pairs import CsvKeys, PairDataset, detect_pairs, read_csv_pairs, split_pairs
from mmfm.data.webdata import (Collate, ConvertMode, SkipCounter, ToSample, check_shards, image_text_dataset,
                               image_transform, stream_rng)
from test_clip_data import TOK, _cfg
from test_clip_recipe import RECIPE, _recipe

MODEL = ["--preset", "clip-test", "--no-probe", "batch_size=4", "num_workers=0", "warmup=1", "img_size=28",
         "patch_size=7", "in_chans=1", "image_mean=(0.5,)", "image_std=(0.5,)", "context_length=32",
         "schedule_by_time=false"]
COLOURS = ["red", "green", "blue", "white"]


def _image(i: int, size: int = 20, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(i)
    arr = (rng.random((size, size, 3)) * 80).astype(np.uint8)
    arr[4:14, 4:14, i % 3] = 255  # a coloured square
    arr[0, 0] = [i % 256, i // 256, 7]  # every image distinct
    return Image.fromarray(arr).convert(mode)


def _write_images(folder: Path, n: int, fmt: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.{fmt}"
        _image(i).save(p)
        paths.append(p)
    return paths


def _caption(i: int) -> str:
    return f"a {COLOURS[i % 3]} square number {i}"


def _csv(path: Path, n: int = 12, sep: str = ",", keys=("filepath", "title"), absolute: bool = False) -> Path:
    paths = _write_images(path.parent / "images", n)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow([keys[0], "extra", keys[1]])
        for i, p in enumerate(paths):
            w.writerow([str(p) if absolute else str(p.relative_to(path.parent)), "x", _caption(i)])
    return path


def _run(tmp_path, *args, steps: int = 3) -> dict:
    return _recipe().main(["--out", str(tmp_path / "run"), "--max-steps", str(steps), *MODEL, *args])


def _assert_retrieval_only(metrics, fmt, n):
    assert metrics["steps"] == 3 and metrics["format"] == fmt
    assert metrics["split/train"] + metrics["split/test"] == n and metrics["split/test"] > 0
    for k in ("i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5"):
        assert 0.0 <= metrics[k] <= 1.0
    assert not any(k.startswith("zeroshot_") for k in metrics)  # no classes: retrieval only


def test_csv_default_keys(tmp_path):
    metrics = _run(tmp_path, "--data", str(_csv(tmp_path / "data" / "pairs.csv")))
    _assert_retrieval_only(metrics, "open_clip CSV", 12)
    assert metrics["split/seed"] == 0 and (tmp_path / "run" / "model" / "config.json").is_file()


def test_csv_custom_keys_separator_and_tsv(tmp_path):
    data = _csv(tmp_path / "a" / "pairs.txt.csv", sep=";", keys=("img", "caption"), absolute=True)
    metrics = _run(tmp_path, "--data", str(data), "--csv-img-key", "img", "--csv-caption-key", "caption",
                   "--csv-separator", ";", "--test-fraction", "0.25")
    _assert_retrieval_only(metrics, "open_clip CSV", 12)
    assert metrics["split/test_images"] == 3
    tsv = read_csv_pairs(_csv(tmp_path / "b" / "pairs.tsv", sep="\t"))  # .tsv: tab by default
    assert len(tsv) == 12 and tsv.captions[1] == _caption(1) and Path(tsv.paths[0]).is_file()


def test_folder_of_images_with_captions(tmp_path, caplog):
    root = tmp_path / "pairs"
    for i, p in enumerate(_write_images(root / "a", 6, "jpg") + _write_images(root / "b" / "c", 6)):
        p.with_suffix(".txt").write_text(_caption(i) + "\n")
    _image(99).save(root / "no_caption.png")
    with caplog.at_level(logging.INFO):
        metrics = _run(tmp_path, "--data", str(root))
    _assert_retrieval_only(metrics, "image + caption folder", 12)
    assert "1 of 13 images have no .txt caption" in caplog.text
    assert "image + caption folder, 12 pairs (12 images)" in caplog.text


def _shard(path: Path, start: int, n: int, image_ext: str = "jpg", caption: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            buf = io.BytesIO()
            _image(i).save(buf, format="JPEG" if image_ext == "jpg" else image_ext.upper())
            members = [(image_ext, buf.getvalue())] + ([("txt", _caption(i).encode())] if caption else [])
            for ext, data in members:
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_folder_jpg_txt_without_classes(tmp_path):
    _shard(tmp_path / "shards" / "train-000000.tar", 0, 8)
    _shard(tmp_path / "shards" / "train-000001.tar", 8, 8, "png")
    _shard(tmp_path / "shards" / "test-000000.tar", 16, 6)
    metrics = _run(tmp_path, "--data", str(tmp_path / "shards"))
    assert metrics["steps"] == 3 and metrics["format"] == "webdataset"
    assert metrics["i2t_recall@5"] > 0 and not any(k.startswith("zeroshot_") for k in metrics)


def test_repeated_captions_become_zero_shot_classes(tmp_path):
    data = tmp_path / "pairs.csv"
    paths = _write_images(tmp_path / "images", 16)
    data.write_text("filepath,title\n" + "".join(f"{p.name and 'images/' + p.name},a {COLOURS[i % 2]} square\n"
                                                 for i, p in enumerate(paths)))
    metrics = _run(tmp_path, "--data", str(data))
    assert 0.0 <= metrics["zeroshot_top1/captions"] <= 1.0 and metrics["zeroshot_top5/captions"] == 1.0
    assert 0.0 <= metrics["i2t_class@1"] <= 1.0


def test_classes_json_and_label_column(tmp_path):
    paths = _write_images(tmp_path / "images", 16)
    rows = [f"images/{p.name},{_caption(i)},{'shapes' if i % 2 else 'emoji'},{COLOURS[i % 3] if i % 2 else ''}"
            for i, p in enumerate(paths)]
    (tmp_path / "pairs.csv").write_text("filepath,title,source,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "classes.json").write_text('{"shapes": {"classnames": ["red", "green", "blue"], '
                                           '"prompts": ["a {} square."]}}')
    pairs = detect_pairs(tmp_path / "pairs.csv")
    assert pairs.labels[:4] == [-1, 1, -1, 0] and pairs.sources[:2] == ["emoji", "shapes"]
    metrics = _run(tmp_path, "--data", str(tmp_path / "pairs.csv"))
    assert "zeroshot_top1/shapes" in metrics and "zeroshot_top1/emoji" not in metrics


def test_split_keeps_copies_of_an_image_together(tmp_path):
    paths = _write_images(tmp_path / "images", 10)
    rows = [f"images/{p.name},{_caption(i)}" for i, p in enumerate(paths)]
    rows += [f"images/{paths[3].name},another caption of image 3", f"images/{paths[3].name},{_caption(3)}"]
    (tmp_path / "p.csv").write_text("filepath,title\n" + "\n".join(rows) + "\n")
    pairs = detect_pairs(tmp_path / "p.csv")
    train, test, sizes = split_pairs(pairs, 0.3, seed=1)
    assert sizes["duplicates_dropped"] == 1 and sizes["rows_sharing_an_image"] == 2
    assert not set(train.paths) & set(test.paths) and len(train) + len(test) == 11
    again = split_pairs(pairs, 0.3, seed=1)[1]
    assert again.paths == test.paths  # deterministic by seed


def _fails(tmp_path, args, match, exc=DataFormatError):
    out = tmp_path / "failed_run"
    with pytest.raises(exc, match=match):
        _recipe().main(["--out", str(out), "--max-steps", "3", *MODEL, *args])
    assert not out.exists()  # nothing half-written


def test_bad_inputs_fail_before_out_is_written(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    _fails(tmp_path, ["--data", str(tmp_path / "empty.csv")], "the file is empty")
    (tmp_path / "header.csv").write_text("filepath,title\n")
    _fails(tmp_path, ["--data", str(tmp_path / "header.csv")], "no rows follow")
    (tmp_path / "empty_dir").mkdir()
    _fails(tmp_path, ["--data", str(tmp_path / "empty_dir")], "the folder is empty")
    _write_images(tmp_path / "no_txt", 3)
    _fails(tmp_path, ["--data", str(tmp_path / "no_txt")], "(?s)none has a same-named .txt.*open_clip CSV/TSV.*"
                                                           "webdataset shards.*image \\+ caption folder")
    (tmp_path / "cols.csv").write_text("path;text\na.png;a cat\n")
    _fails(tmp_path, ["--data", str(tmp_path / "cols.csv")], "no column\\(s\\) \\['filepath', 'title'\\]")
    (tmp_path / "data.json").write_text("{}")
    _fails(tmp_path, ["--data", str(tmp_path / "data.json")], "not a image-text layout")


def test_csv_with_missing_images_lists_the_first_few(tmp_path):
    data = _csv(tmp_path / "pairs.csv", n=4)
    data.write_text(data.read_text() + "".join(f"gone/{i}.png,x,a lost image\n" for i in range(7)))
    _fails(tmp_path, ["--data", str(data)], "7 of 11 image paths do not exist .*line 6: .*gone/0.png; line 7: .*"
                                            "gone/4.png \\.\\.\\.")


def test_unreadable_images_are_skipped_counted_and_all_bad_fails(tmp_path):
    data = _csv(tmp_path / "train" / "pairs.csv", n=8)
    truncated = tmp_path / "train" / "images" / "img003.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    test = _csv(tmp_path / "test" / "pairs.csv", n=4)
    metrics = _run(tmp_path, "--data", str(data), "--test-data", str(test))
    assert metrics["skipped_samples"] >= 1 and metrics["steps"] == 3
    assert metrics["split/train"] == 8 and metrics["split/test"] == 4  # given splits, sizes in pairs
    for p in (tmp_path / "train" / "images").glob("*.png"):
        p.write_bytes(b"not an image")
    _fails(tmp_path, ["--data", str(data), "--test-data", str(test)], "none of the first 8 images can be read")


def test_run_stops_past_max_bad_fraction(tmp_path):
    data = _csv(tmp_path / "pairs.csv", n=24)
    for i, p in enumerate(sorted((tmp_path / "images").glob("*.png"))):
        if i % 4:  # 3 of 4 images broken (never 8 in a row): the fraction check fires within a few steps
            p.write_bytes(b"broken")
    with pytest.raises(Exception, match="could not be decoded, more than max_bad_fraction=0.05"):
        _run(tmp_path, "--data", str(data), "--test-data", str(data), steps=40)


def test_batch_larger_than_the_data_is_a_config_error(tmp_path):
    from mmfm.config import ConfigError

    data = _csv(tmp_path / "pairs.csv", n=6)
    with pytest.raises(ConfigError, match="batch_size=8 x 1 process\\(es\\) is more than the 4 training pairs"):
        _run(tmp_path, "--data", str(data), "batch_size=8", "--test-fraction", "0.33")


def test_pair_dataset_skips_and_counts(tmp_path):
    data = _csv(tmp_path / "pairs.csv", n=4)
    (tmp_path / "images" / "img001.png").write_bytes(b"broken")
    ds = PairDataset(read_csv_pairs(data, CsvKeys()), lambda im: im.size, retry=True)
    assert ds[1][1] == _caption(2) and ds.handler.count == 1  # the next pair stands in, counted
    ds_eval = PairDataset(read_csv_pairs(data), lambda im: im.size, retry=False)
    assert ds_eval[1] is None and ds_eval[0] is not None and ds_eval.handler.count == 1


def test_mixed_modes_and_sizes_are_logged_once(caplog):
    convert = ConvertMode("RGB")
    with caplog.at_level(logging.INFO, logger="mmfm.data.webdata"):
        for im in (_image(0, 10, "RGBA"), _image(1, 12, "L"), _image(2, 14, "RGBA"), _image(3, 16, "L")):
            assert convert(im).mode == "RGB"
    assert caplog.text.count("converting RGBA images to RGB") == 1
    assert caplog.text.count("converting L images to RGB") == 1
    assert caplog.text.count("different sizes (10x10, 12x12") == 1


def test_missing_shard_fails_before_training(tmp_path):
    shard = tmp_path / "train-000000.tar"
    _fails(tmp_path, ["--data", str(shard)], f"--data {shard}: no such file", FileNotFoundError)
    _fails(tmp_path, ["--data", str(tmp_path / "train-{000000..000001}.tar")], "shard .*000000.tar: no such file",
           FileNotFoundError)


@pytest.mark.parametrize("case", ["not_a_tar"])
def test_broken_shard_fails_fast_instead_of_hanging(tmp_path, case):
    shard = tmp_path / "train-000000.tar"
    shard.write_text("this is not a tar file\n" * 100)
    try:  # the old code never ended here; the limit is generous for a loaded CI machine (normally ~10 s)
        proc = subprocess.run([sys.executable, str(RECIPE), "--data", str(shard), "--test-data", str(shard),
                               "--out", str(tmp_path / "run"), *MODEL], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"clip_pretrain.py on a {case} shard still running after 300 s (the empty-epoch hang)")
    assert proc.returncode != 0
    assert f"shard {shard}: not a readable tar file" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_shard_checks_name_the_broken_shard(tmp_path):
    good = _shard(tmp_path / "train-000000.tar", 0, 4)
    (tmp_path / "train-000001.tar").write_bytes(b"\0" * 10)
    with pytest.raises(DataFormatError, match="shard .*train-000001.tar: not a readable tar file"):
        detect_pairs(str(tmp_path / "train-*.tar"))
    with pytest.raises(FileNotFoundError, match="shard .*train-000009.tar: no such file"):
        check_shards([str(good), str(tmp_path / "train-000009.tar")])
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(DataFormatError, match="empty.tar: the tar file is empty"):
        check_shards([str(tmp_path / "empty.tar")])


def test_a_stream_without_usable_samples_raises_instead_of_spinning(tmp_path):
    shard = _shard(tmp_path / "train-000000.tar", 0, 6, caption=False)  # images, no captions
    ds = image_text_dataset(str(shard), image_transform(_cfg()), Collate(TOK, 32), 2, train=True)
    with pytest.raises(DataFormatError, match="(?s)gave no batch.*DataFormatError: 6.*has no a caption"):
        next(iter(ds))
    few = _shard(tmp_path / "few-000000.tar", 0, 3)  # fewer samples than one full batch
    ds = image_text_dataset(str(few), image_transform(_cfg()), Collate(TOK, 32), 4, train=True)
    with pytest.raises(DataFormatError, match="at least batch_size"):
        next(iter(ds))


def test_skip_counter_skips_decode_errors_only():
    counter = SkipCounter()
    assert counter(OSError("image file is truncated")) and counter(DataFormatError("no caption"))
    assert counter.count == 2 and counter.by_type == {"OSError": 1, "DataFormatError": 1}
    with pytest.raises(TypeError):  # a bug in a transform is not a bad sample
        counter(TypeError("unsupported operand"))
    shard = _shard(Path(tempfile.mkdtemp()) / "t-000000.tar", 0, 3)

    def buggy(image):
        raise TypeError("a bug, not a bad sample")

    with pytest.raises(TypeError, match="a bug"):
        list(image_text_dataset(str(shard), buggy, Collate(TOK, 32), 2, train=False))


def test_caption_draws_differ_by_rank_and_worker(monkeypatch):
    caps = [f"caption {i}" for i in range(50)]
    sample = {"png": _image(0), "txt": "x", "json": {"captions": caps}}

    def draws(rank):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        to_sample = ToSample(lambda im: im, random_caption=True, seed=3)
        return [to_sample(sample)[1] for _ in range(20)]

    assert draws(0) == draws(0) and draws(0) != draws(1)
    monkeypatch.setenv("WORKER", "1")
    monkeypatch.setenv("NUM_WORKERS", "2")
    assert draws(0) != draws(1) and stream_rng(3).random() != (monkeypatch.setenv("WORKER", "0") or
                                                              stream_rng(3).random())
