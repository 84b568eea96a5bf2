"""Plain text from a user's files (mmfm.data.text): every accepted layout trains gpt-test for a few steps through
recipes/gpt_pretrain.py; splits are seeded and leak-free; bad input fails with the file (and line / byte) named
and leaves no --out behind."""
import importlib.util
import json
import random
import tarfile
from pathlib import Path

import pytest

from mmfm.config import ConfigError
from mmfm.data.formats import DataFormatError
from mmfm.data.text import TextDataConfig, chunk_text, detect, plan_text_data, read_documents
from mmfm.data.tokens import build_token_files, read_meta, read_tokens
from mmfm.tokenizers import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat ran over under quick brown lazy fox river hill king lord night".split()
RUN = ["--preset", "gpt-test", "--max-steps", "3", "time_budget_s=0", "block_size=16", "batch_size=2",
       "val_tokens=64", "sample_tokens=0", "val_every=1000"]


def _docs(n=40, seed=0):
    rng = random.Random(seed)
    return [f"Doc {i}. " + " ".join(rng.choice(WORDS) for _ in range(20)) + "." for i in range(n)]


def _recipe(name="gpt_pretrain"):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}_text", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tar(path, docs, key_prefix="s"):
    import io

    with tarfile.open(path, "w") as tar:
        for i, doc in enumerate(docs):
            data = doc if isinstance(doc, bytes) else doc.encode()
            info = tarfile.TarInfo(f"{key_prefix}{i:05d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_txt(tmp):
    (tmp / "notes.txt").write_text("\n\n".join(_docs(60)), encoding="utf-8")
    return tmp / "notes.txt"


def write_folder(tmp):
    (tmp / "corpus" / "sub").mkdir(parents=True)
    for i, doc in enumerate(_docs()):
        (tmp / "corpus" / ("sub" if i % 2 else "") / f"d{i}.{'md' if i % 3 else 'txt'}").write_text(doc)
    (tmp / "corpus" / "README.csv").write_text("ignored,file\n")
    return tmp / "corpus"


def write_jsonl(tmp):
    (tmp / "c.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(_docs())) + "\n")
    return tmp / "c.jsonl"


def write_hf(tmp):
    import datasets

    datasets.Dataset.from_dict({"text": _docs(), "n": list(range(40))}).save_to_disk(str(tmp / "hf"))
    return tmp / "hf"


def write_shards(tmp):
    (tmp / "shards").mkdir()
    docs = _docs()
    _tar(tmp / "shards" / "s-000.tar", docs[:20], "a")
    _tar(tmp / "shards" / "s-001.tar", docs[20:], "b")
    return tmp / "shards"


def write_token_folder(tmp):
    build_token_files("\n\n".join(_docs()), tmp / "tokens", "char")
    return tmp / "tokens"


FORMATS = {"text file": write_txt, "text folder": write_folder, "JSONL": write_jsonl,
           "Hugging Face datasets folder": write_hf, "webdataset shards": write_shards,
           "token folder": write_token_folder}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_trains_gpt_test(tmp_path, fmt):
    data, out = FORMATS[fmt](tmp_path), tmp_path / "run"
    assert detect(data) == fmt
    extra = ["chunk_chars=200"] if fmt == "text file" else []
    metrics = _recipe().main(["--data", str(data), "--out", str(out), *RUN, *extra])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 3 and saved["data_info/format"] == fmt and saved["data"] == str(data)
    assert (out / "model" / "tokenizer").is_dir() and metrics["val_loss"] > 0
    if fmt != "token folder":
        assert saved["data_info/documents"] == (40 if fmt != "text file" else len(chunk_text(data.read_text(), 200)))
        assert saved["data_info/splits/train"] + saved["data_info/splits/val"] == saved["data_info/documents"]
        assert saved["data_info/splits/val"] == round(0.1 * saved["data_info/documents"])
        folder = Path(saved["train_config/data"])
        assert folder.parent == out / "data" and read_meta(folder)["val_documents"] == saved["data_info/splits/val"]


def test_shard_pattern_and_single_shard(tmp_path):
    write_shards(tmp_path)
    for path in (tmp_path / "shards" / "s-{000..001}.tar", tmp_path / "shards" / "s-000.tar"):
        corpus = read_documents(path)
        assert corpus.format == "webdataset shards"
    assert len(read_documents(tmp_path / "shards" / "s-{000..001}.tar").docs) == 40
    assert read_documents(tmp_path / "shards" / "s-000.tar").docs == _docs()[:20]


def test_chunks_of_one_file_keep_every_paragraph():
    paras = _docs(50)
    chunks = chunk_text("\n\n".join(paras) + "\n\n\n", 300)
    assert "\n\n".join(chunks) == "\n\n".join(paras)  # nothing lost, cut only at blank lines
    assert all(len(c) >= 300 for c in chunks[:-1]) and len(chunks) > 5
    long_line = "x" * 5000
    assert [len(c) for c in chunk_text(long_line, 500)] == [2000, 2000, 1000]  # cut every 4 * size


def test_split_is_seeded_and_drops_duplicates_across_splits(tmp_path):
    docs = _docs(50)
    docs += docs[:10]  # 10 exact copies
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    cfg = TextDataConfig(val_fraction=0.2, test_fraction=0.1)
    a = plan_text_data(tmp_path / "c.jsonl", tmp_path / "cache", cfg, seed=1)
    b = plan_text_data(tmp_path / "c.jsonl", tmp_path / "cache", cfg, seed=1)
    c = plan_text_data(tmp_path / "c.jsonl", tmp_path / "cache", cfg, seed=2)
    assert a.splits == b.splits and a.splits != c.splits and a.folder == b.folder != c.folder
    train, val, test = (set(a.splits[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 50 and a.info["duplicates_dropped"] == 10
    assert sum(a.info["splits"].values()) == 50


def test_given_validation_data_and_dataset_dict_splits(tmp_path):
    docs = _docs(40)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    (tmp_path / "val.txt").write_text("\n\n".join(docs[:3] + ["A held-out paragraph of its own."]))
    plan = plan_text_data(tmp_path / "train.jsonl", tmp_path / "cache", TextDataConfig(chunk_chars=40),
                          val_data=tmp_path / "val.txt")
    assert plan.splits["val"] == docs[:3] + ["A held-out paragraph of its own."]
    assert plan.splits["train"] == docs[3:] and plan.info["duplicates_dropped"] == 3  # copies of val leave train
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs[:30]}),
                          "validation": datasets.Dataset.from_dict({"text": docs[30:]})}).save_to_disk(str(tmp_path / "dd"))
    plan = plan_text_data(tmp_path / "dd", tmp_path / "cache")
    assert plan.splits == {"train": docs[:30], "val": docs[30:]} and plan.info["given"] == ["val"]


def test_token_folder_is_cached_by_content(tmp_path):
    data = write_jsonl(tmp_path)
    first = plan_text_data(data, tmp_path / "cache")
    folder = first.write(min_tokens=17)
    again = plan_text_data(data, tmp_path / "cache")
    assert again.folder == folder and again.splits == {}  # nothing to build: the tokenizer comes from the cache
    assert again.write() == folder and again.tokenizer.vocab_size == load_tokenizer(folder / "tokenizer").vocab_size
    tok = load_tokenizer(folder / "tokenizer")
    eos = tok.eos_id
    train = read_tokens(folder / "train.bin")
    assert list(train).count(eos) == len(first.splits["train"])  # documents end with end-of-text
    assert tok.decode(train[:list(train).index(eos)]) == first.splits["train"][0]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no temporary folder left


def _bad(tmp_path, argv, exc, *needles):
    out = tmp_path / "run"
    run = [a for a in RUN if a != "block_size=16"] if "--preset" in argv else RUN  # a saved preset keeps its own
    with pytest.raises(exc) as info:
        _recipe().main(["--out", str(out), *run, *argv])
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert not out.exists()  # nothing half-written
    return str(info.value)


def test_bad_input_names_file_line_and_byte(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    _bad(tmp_path, ["--data", str(tmp_path / "empty.txt")], DataFormatError, "empty.txt", "the file is empty")
    (tmp_path / "nothing").mkdir()
    _bad(tmp_path, ["--data", str(tmp_path / "nothing")], DataFormatError, "the folder is empty")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n\n ")
    _bad(tmp_path, ["--data", str(tmp_path / "blank")], DataFormatError, "holds no text")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": "fine"}\n{"text": oops}\n')
    _bad(tmp_path, ["--data", str(tmp_path / "bad.jsonl")], DataFormatError, "bad.jsonl:4:", "not valid JSON")
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    _bad(tmp_path, ["--data", str(tmp_path / "nofield.jsonl")], DataFormatError, "nofield.jsonl:2:", "'text'")
    (tmp_path / "num.jsonl").write_text('{"text": "ok"}\n\n{"text": 3}\n')
    _bad(tmp_path, ["--data", str(tmp_path / "num.jsonl")], DataFormatError, "num.jsonl:3:", "must be a string")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    _bad(tmp_path, ["--data", str(tmp_path / "latin1.txt")], DataFormatError, "latin1.txt", "byte 3", "not UTF-8")
    _tar(tmp_path / "bad.tar", ["fine text", b"ab\xffcd"])
    _bad(tmp_path, ["--data", str(tmp_path / "bad.tar")], DataFormatError, "bad.tar", "s00001.txt", "byte 2")


def test_unknown_layouts_list_the_formats(tmp_path):
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    msg = _bad(tmp_path, ["--data", str(tmp_path / "table.csv")], DataFormatError, "table.csv", "Accepted formats")
    for name in ("text file", "text folder", "JSONL", "Hugging Face datasets folder", "webdataset shards"):
        assert f"- {name}:" in msg
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"\x89PNG")
    _bad(tmp_path, ["--data", str(tmp_path / "pics")], DataFormatError, "no .txt, .md or .tar files", '{"text":')
    _bad(tmp_path, ["--data", str(tmp_path / "missing.txt")], FileNotFoundError, "missing.txt")
    import datasets

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "hf"))
    _bad(tmp_path, ["--data", str(tmp_path / "hf")], DataFormatError, "no \"text\" column", "body")


def test_bad_settings_fail_before_out(tmp_path):
    data = write_jsonl(tmp_path)
    _bad(tmp_path, ["--data", str(data), "tokenizer=nope.json"], ConfigError, "tokenizer='nope.json'")
    _bad(tmp_path, ["--data", str(data), "data=other"], ConfigError, "disagree")
    (tmp_path / "tiny.jsonl").write_text('{"text": "a b"}\n' * 3 + '{"text": "c"}\n' * 7)
    _bad(tmp_path, ["--data", str(tmp_path / "tiny.jsonl")], DataFormatError, "split holds", "block_size + 1 = 17")
    (tmp_path / "one.jsonl").write_text('{"text": "only one document"}\n')
    _bad(tmp_path, ["--data", str(tmp_path / "one.jsonl")], DataFormatError, "leave no val split")
    tokens = write_token_folder(tmp_path)
    _bad(tmp_path, ["--data", str(tokens), "--val-data", str(data)], DataFormatError, "token folder")


def test_ddp_two_processes_on_a_text_file(tmp_path):
    import os
    import subprocess
    import sys

    data, out = write_txt(tmp_path), tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes" / "gpt_pretrain.py"), "--data", str(data), "--out", str(out),
           "--device", "cpu", "--devices", "2", "--strategy", "ddp", "chunk_chars=200", *RUN]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3 and metrics["data_info/format"] == "text file"
    assert [p.name for p in (out / "data").iterdir()] == [Path(metrics["train_config/data"]).name]  # one, shared


def test_given_val_and_test_files_through_the_recipe(tmp_path):
    docs = _docs(60)
    for name, part in (("train", docs[:40]), ("val", docs[40:50]), ("test", docs[50:])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in part))
    out = tmp_path / "run"
    _recipe().main(["--data", str(tmp_path / "train.jsonl"), "--val-data", str(tmp_path / "val.jsonl"),
                    "--test-data", str(tmp_path / "test.jsonl"), "--out", str(out), *RUN])
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["data_info/splits/train"], saved["data_info/splits/val"], saved["data_info/splits/test"]) == (40, 10, 10)
    assert saved["test_loss"] > 0 and saved["test_tokens"] > 0 and saved["data_info/given"] == ["test", "val"]


def test_text_the_preset_tokenizer_cannot_encode(tmp_path):
    import mmfm
    from mmfm.tokenizers import CharTokenizer

    model = mmfm.build_model("gpt-test", vocab_size=8)
    model.tokenizer = CharTokenizer("abc ")
    model.save_pretrained(tmp_path / "preset")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": f"abc {i}"}) for i in range(20)))
    _bad(tmp_path, ["--data", str(tmp_path / "t.jsonl"), "--preset", str(tmp_path / "preset")], DataFormatError,
         "--data", "t.jsonl", "cannot encode with this char tokenizer", "'0'")
