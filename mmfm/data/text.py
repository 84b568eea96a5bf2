"""Plain text for language-model pretraining: a user's path -> documents -> a split without leakage -> a
token folder (train.bin, val.bin, [test.bin], tokenizer/, meta.json) that `TokenWindows` streams.

    corpus = read_documents("notes/")     # detected from the path; logs the format, documents and characters
    plan = plan_text_data("notes/", cfg=TextDataConfig(tokenizer="bpe"), seed=0)   # reads and checks, writes nothing
    folder = plan.write("runs/x/data")    # cached by content: a rerun or another DDP rank reuses it

Accepted layouts (`FORMATS`): one .txt/.md file (cut into chunks of about `chunk_chars` characters at blank
lines, so that a single file can be split), a folder of .txt/.md files (one document per file), JSON Lines
with a "text" field, a Hugging Face `datasets` folder written by `save_to_disk` (a "text" column; a
DatasetDict's validation/test splits are used as given), webdataset .tar shards whose samples hold a .txt, and
an already built token folder. Without given validation/test data the documents are split by
`mmfm.data.formats.split_examples` (seeded; exact duplicates kept in one split only).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .formats import DataFormatError, Format, fingerprint, read_jsonl, read_utf8, require_path, split_examples, \
    unknown_format

log = logging.getLogger(__name__)
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
FORMATS = (
    Format("text file", "one .txt or .md file, cut into chunks of about chunk_chars characters at blank lines",
           "First paragraph of my notes.\n\nSecond paragraph.\n..."),
    Format("text folder", "a folder of .txt/.md files (searched recursively), one document per file",
           "corpus/a.txt\ncorpus/b.md\ncorpus/more/c.txt"),
    Format("JSONL", 'a .jsonl file, one JSON object per line with a "text" field',
           '{"text": "The first document."}\n{"text": "The second one.", "source": "web"}\n...'),
    Format("Hugging Face datasets folder", 'a folder written by datasets.save_to_disk with a "text" column',
           'ds = datasets.Dataset.from_dict({"text": ["one", "two"]})\nds.save_to_disk("my_corpus")\n'
           '(a DatasetDict with train/validation/test splits works too)'),
    Format("webdataset shards", "a .tar shard, a folder of .tar shards or a pattern shard-{000..009}.tar; "
           "each sample's .txt member is a document", "shard-000.tar: doc0.txt, doc1.txt, ...\n"
           "shard-001.tar: doc2.txt, ...\n(other members of a sample are ignored)"),
    Format("token folder", "a folder built by mmfm (train.bin, val.bin, tokenizer/, meta.json)",
           "data/shakespeare/char/train.bin\ndata/shakespeare/char/val.bin\ndata/shakespeare/char/meta.json"),
)


@dataclass
class TextDataConfig:
    """How a user's text becomes tokens (overridable as key=value in gpt_pretrain)."""

    tokenizer: str = "auto"  # char | bpe | path/to/tokenizer.json | auto: the --preset folder's tokenizer, else char
    bpe_vocab: int = 4096  # vocabulary of a BPE trained on the training split
    val_fraction: float = 0.1  # held-out documents when no validation data is given
    test_fraction: float = 0.0  # test documents when no test data is given (0: no test split)
    chunk_chars: int = 2000  # a single text file is cut at blank lines into chunks of about this size


@dataclass
class Corpus:
    """The documents of one path, the format they were found in, and any splits the source defines."""

    docs: list[str]
    format: str
    path: str
    contiguous: bool = False  # chunks of one text (joined by blank lines), not separate documents
    given: dict[str, list[str]] = field(default_factory=dict)  # e.g. a DatasetDict's "val" / "test"

    @property
    def chars(self) -> int:
        return sum(len(d) for d in self.docs)


def chunk_text(text: str, size: int) -> list[str]:
    """Paragraphs (split at blank lines) packed into chunks of at least `size` characters; a paragraph
    longer than 4 * size is cut at line breaks, and a line longer than that every 4 * size characters."""
    chunks, buf, limit = [], "", 4 * size
    for para in re.split(r"\n[ \t\r]*\n", text):
        if not para.strip():
            continue
        lines = para.split("\n") if len(para) > limit else [para]
        for piece in (ln[i:i + limit] for ln in lines for i in range(0, max(len(ln), 1), limit)):
            buf = f"{buf}\n\n{piece}" if buf else piece
            if len(buf) >= size:
                chunks.append(buf)
                buf = ""
    return chunks + ([buf] if buf.strip() else [])


def _text_file(path: Path, cfg: TextDataConfig) -> Corpus:
    return Corpus(chunk_text(read_utf8(path), cfg.chunk_chars), "text file", str(path), contiguous=True)


def _text_folder(path: Path, cfg: TextDataConfig) -> Corpus:
    files = _files(path, TEXT_SUFFIXES)
    return Corpus([read_utf8(f) for f in files], "text folder", str(path))


def _jsonl(path: Path, cfg: TextDataConfig) -> Corpus:
    records = read_jsonl(path, required=["text"])
    bad = next((i for i, r in enumerate(records) if not isinstance(r["text"], str)), None)
    if bad is not None:  # read_jsonl skips blank lines: count non-blank lines to name the line
        lineno = [n for n, ln in enumerate(read_utf8(path).splitlines(), 1) if ln.strip()][bad]
        raise DataFormatError(f"{path}:{lineno}: \"text\" must be a string, got "
                              f"{type(records[bad]['text']).__name__}")
    return Corpus([r["text"] for r in records], "JSONL", str(path))


def _hf_column(ds, path: Path, split: str = "") -> list[str]:
    where = f"{path}{f' (split {split!r})' if split else ''}"
    if "text" not in ds.column_names:
        raise DataFormatError(f"{where}: no \"text\" column; the dataset has {ds.column_names}")
    dtype = getattr(ds.features["text"], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise DataFormatError(f"{where}: the \"text\" column must hold strings, it holds {ds.features['text']}")
    return [t for t in ds["text"] if t and t.strip()]


def _hf_datasets(path: Path, cfg: TextDataConfig) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise ImportError("reading a Hugging Face datasets folder needs `pip install datasets` "
                          "(in mmfm's data extra)") from None
    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.DatasetDict):
        return Corpus(_hf_column(ds, path), "Hugging Face datasets folder", str(path))
    if "train" not in ds:
        raise DataFormatError(f"{path}: a DatasetDict needs a 'train' split; it has {list(ds)}")
    given = {ours: _hf_column(ds[theirs], path, theirs)
             for ours, theirs in (("val", "validation"), ("val", "val"), ("test", "test")) if theirs in ds}
    return Corpus(_hf_column(ds["train"], path, "train"), "Hugging Face datasets folder", str(path), given=given)


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{where}: not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) cannot be "
                              f"decoded ({e.reason})") from None


def _webdataset(path: Path | str, cfg: TextDataConfig) -> Corpus:
    import webdataset as wds

    from .webdata import expand_urls

    urls = [str(p) for p in _files(Path(path), (".tar",))] if Path(path).is_dir() else expand_urls(str(path))
    docs, skipped = [], 0
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        if "txt" not in sample:
            skipped += 1
            continue
        docs.append(_decode(sample["txt"], f"{sample['__url__']}: {sample['__key__']}.txt"))
    if skipped:
        log.warning("%s: %d samples without a .txt member skipped", path, skipped)
    if not docs:
        raise DataFormatError(f"{path}: no sample holds a .txt member ({skipped} samples without one)")
    return Corpus(docs, "webdataset shards", str(path))


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def detect(path: str | os.PathLike, what: str = "--data") -> str:
    """The format name of `path` (one of FORMATS), or an error listing the accepted formats."""
    text = str(path)
    if not Path(text).exists() and any(c in text for c in "{*?["):
        return "webdataset shards"  # a shard pattern
    p = require_path(path, what)
    suffix = p.suffix.lower()
    if p.is_file():
        found = {**dict.fromkeys(TEXT_SUFFIXES, "text file"), **dict.fromkeys(JSONL_SUFFIXES, "JSONL"),
                 ".tar": "webdataset shards"}.get(suffix)
        if found:
            return found
        raise unknown_format(path, "plain text", FORMATS, why=f"a {suffix or 'suffix-less'} file")
    if (p / "meta.json").is_file() and (p / "train.bin").is_file():
        return "token folder"
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        return "Hugging Face datasets folder"
    if _files(p, (".tar",)):
        return "webdataset shards"
    if _files(p, TEXT_SUFFIXES):
        return "text folder"
    raise unknown_format(path, "plain text", FORMATS, why="a folder with no .txt, .md or .tar files")


_READERS = {"text file": _text_file, "text folder": _text_folder, "JSONL": _jsonl,
            "Hugging Face datasets folder": _hf_datasets, "webdataset shards": _webdataset}


def read_documents(path: str | os.PathLike, cfg: TextDataConfig | None = None, what: str = "--data") -> Corpus:
    """The non-empty documents under `path`, with a log line naming the format and the counts."""
    cfg = cfg or TextDataConfig()
    fmt = detect(path, what)
    if fmt == "token folder":
        raise DataFormatError(f"{what} {path} is a token folder (already tokenized): pass it as --data alone")
    corpus = _READERS[fmt](Path(path) if Path(path).exists() else path, cfg)
    n = len(corpus.docs)
    corpus.docs = [d for d in corpus.docs if d.strip()]
    if not corpus.docs:
        raise DataFormatError(f"{what} {path}: {fmt} holds no text (all {n} documents are empty)")
    unit = "chunks" if corpus.contiguous else "documents"
    log.info("%s %s: %s, %s %s, %s characters%s", what, path, fmt, f"{len(corpus.docs):,}", unit,
             f"{corpus.chars:,}", f" ({n - len(corpus.docs)} empty skipped)" if n > len(corpus.docs) else "")
    return corpus


@dataclass
class TextPlan:
    """A checked, split corpus and its tokenizer, not yet written: `write()` builds (or reuses) `folder`."""

    folder: Path
    info: dict  # format, documents, characters, split sizes, duplicates dropped, tokenizer: for metrics.json
    tokenizer: object = None
    splits: dict[str, list[str]] = field(default_factory=dict)
    separator: str | None = None

    def write(self, min_tokens: int = 0) -> Path:
        """The token folder, built atomically (a temporary folder renamed into place) unless already there;
        a split of fewer than `min_tokens` tokens fails before anything is created."""
        from .tokens import META, write_token_folder

        if (self.folder / META).is_file():
            log.info("token folder %s already built for this data and tokenizer: reused", self.folder)
            return self.folder
        tmp = self.folder.with_name(f".tmp-{os.getpid()}-{self.folder.name}")
        meta = {"source": f"--data {self.info['path']}", "data": self.info}
        try:
            write_token_folder(self.splits, tmp, self.tokenizer, meta, self.separator, min_tokens)
            os.rename(tmp, self.folder)
            log.info("token folder %s ready", self.folder)
        except OSError:
            if not (self.folder / META).is_file():  # not another rank finishing first: a real failure
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.folder


def _drop_copies(parts: dict[str, list[str]]) -> int:
    """Keep each exact document once, in the first of test, val, train that holds it; the number dropped."""
    seen, dropped = set(), 0
    for name in ("test", "val", "train"):
        keep = []
        for doc in parts.get(name, []):
            fp = fingerprint(doc)
            dropped += fp in seen
            if fp not in seen:
                seen.add(fp)
                keep.append(doc)
        parts[name] = keep
    return dropped


def split_documents(corpus: Corpus, given: dict[str, list[str]], cfg: TextDataConfig, seed: int):
    """{"train", "val"[, "test"]} documents and the number of duplicates dropped. A split not `given` is
    drawn from the corpus by `split_examples` (seeded); a document also in an earlier split is dropped."""
    docs = corpus.docs
    s = split_examples(len(docs), docs.__getitem__, 0.0 if "val" in given else cfg.val_fraction,
                       0.0 if "test" in given else cfg.test_fraction, seed)
    parts = {"train": [docs[i] for i in s.train], "val": given.get("val") or [docs[i] for i in s.val],
             "test": given.get("test") or [docs[i] for i in s.test]}
    dropped = s.duplicates_dropped + (_drop_copies(parts) if given else 0)
    unit = "chunks" if corpus.contiguous else "documents"
    for name in ("train", "val"):
        if not parts[name]:
            raise DataFormatError(
                f"--data {corpus.path}: {len(docs)} {unit} leave no {name} split (val_fraction={cfg.val_fraction}, "
                f"{dropped} duplicates dropped); give more text, --val-data, or change val_fraction / chunk_chars")
    if not parts["test"]:
        del parts["test"]
    return parts, dropped


def _content_key(parts: dict[str, list[str]], *extra: str) -> str:
    h = hashlib.sha1("\x1f".join(extra).encode())
    for name, docs in parts.items():
        h.update(f"\x1d{name}".encode())
        for doc in docs:
            h.update(doc.encode("utf-8", "surrogatepass") + b"\x1e")
    return h.hexdigest()[:16]


def _tokenizer_source(cfg: TextDataConfig, preset_tokenizer: Path | None) -> tuple[str, str]:
    """(spec, identity): char, bpe or a tokenizer path, and what the cache key records of it."""
    from ..config import ConfigError

    spec = cfg.tokenizer if cfg.tokenizer != "auto" else (str(preset_tokenizer) if preset_tokenizer else "char")
    if spec in ("char", "bpe"):
        return spec, f"{spec}-{cfg.bpe_vocab}" if spec == "bpe" else spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"tokenizer={cfg.tokenizer!r}: expected auto, char, bpe or the path of a Hugging Face "
                          "tokenizer.json (or a saved tokenizer folder); no such file")
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return str(path), hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()


def _make_tokenizer(spec: str, parts: dict[str, list[str]], cfg: TextDataConfig):
    from ..tokenizers import load_hf_tokenizer, load_tokenizer
    from .tokens import train_tokenizer

    if spec == "char":  # the vocabulary covers every split (a held-out character must stay encodable) and the
        # "\n\n" that joins the chunks of one file
        return train_tokenizer("\n\n" + "".join(d for docs in parts.values() for d in docs), "char")
    if spec == "bpe":
        return train_tokenizer("\n\n".join(parts["train"]), "bpe", cfg.bpe_vocab)
    path, config = Path(spec), Path(spec) / "tokenizer_config.json"
    if config.is_file() and "kind" in json.loads(config.read_text()):  # a tokenizer/ folder mmfm saved
        return load_tokenizer(path)
    return load_hf_tokenizer(path)


def plan_text_data(data: str | os.PathLike, root: str | os.PathLike, cfg: TextDataConfig | None = None,
                   seed: int = 0, val_data=None, test_data=None, preset_tokenizer: Path | None = None) -> TextPlan:
    """Read and check every given path, split, and choose the tokenizer; nothing is written (see TextPlan).
    The token folder goes to <root>/text-<key>, the key a hash of the split documents and the tokenizer."""
    from .tokens import META, read_meta

    cfg = cfg or TextDataConfig()
    if detect(data) == "token folder":
        if val_data is not None or test_data is not None:
            raise DataFormatError(f"--data {data} is a token folder with its own val.bin: "
                                  "--val-data / --test-data need text, not a token folder")
        meta = read_meta(data)
        log.info("--data %s: token folder, %s train / %s val tokens", data, f"{meta['train_tokens']:,}",
                 f"{meta.get('val_tokens', 0):,}")
        return TextPlan(Path(data), {"path": str(data), "format": "token folder"})
    corpus = read_documents(data, cfg)
    given = dict(corpus.given)
    for name, path, flag in (("val", val_data, "--val-data"), ("test", test_data, "--test-data")):
        if path is not None:
            given[name] = read_documents(path, cfg, flag).docs
    parts, dropped = split_documents(corpus, given, cfg, seed)
    spec, ident = _tokenizer_source(cfg, preset_tokenizer)
    separator = "\n\n" if corpus.contiguous else None
    folder = Path(root) / f"text-{_content_key(parts, ident, repr(separator))}"
    info = {"path": str(data), "format": corpus.format, "documents": len(corpus.docs), "chars": corpus.chars,
            "splits": {k: len(v) for k, v in parts.items()}, "duplicates_dropped": dropped, "tokenizer": spec,
            "given": sorted(given)}
    log.info("split (seed %d): %s, %d exact duplicates dropped; tokenizer %s", seed, info["splits"], dropped, spec)
    if (folder / META).is_file():
        from ..tokenizers import load_tokenizer

        return TextPlan(folder, info, load_tokenizer(folder / "tokenizer"))
    return TextPlan(folder, info, _make_tokenizer(spec, parts, cfg), parts, separator)
