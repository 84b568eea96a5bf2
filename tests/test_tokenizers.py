import os
import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfm.tokenizers import ByteBPETokenizer, CharTokenizer, ClipTokenizer, load_tokenizer

CORPUS = ["the quick brown fox jumps over the lazy dog", "héllo wörld ünïcode 日本語 😀👍", "a\tb\nc  d"] * 20


@pytest.fixture(scope="module")
def bpe():
    return ByteBPETokenizer.train(CORPUS, vocab_size=320)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_bpe_roundtrip_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges(bpe):
    assert bpe.vocab_size > 256 + 2
    assert len(bpe.encode("the quick brown fox")) < len("the quick brown fox".encode())


def test_save_load_each_kind(bpe, tmp_path):
    for i, tok in enumerate([bpe, CharTokenizer.train("".join(CORPUS)), ClipTokenizer(context_length=16)]):
        loaded = load_tokenizer(tok.save(tmp_path / str(i)))
        assert type(loaded) is type(tok)
        assert loaded.encode("the lazy dog") == tok.encode("the lazy dog")
        assert loaded.vocab_size == tok.vocab_size


def test_encode_batch_pads_masks_and_truncates(bpe, caplog):
    ids, mask = bpe.encode_batch(["the fox", "the quick brown fox jumps"])
    assert ids.shape == mask.shape and mask[0].sum() < mask[1].sum()
    assert (ids[~mask] == bpe.pad_id).all()
    assert ids[0, mask[0].sum() - 1] == bpe.eos_id
    ids, mask = bpe.encode_batch(["the quick brown fox jumps over the lazy dog"], max_len=4)
    assert ids.shape == (1, 4) and ids[0, -1] == bpe.eos_id
    assert "truncated" in caplog.text


def test_char_specials_and_unknown():
    tok = CharTokenizer.train("abc ", special_tokens=("<|user|>",))
    ids = tok.encode("a<|user|>b", allowed_special="all")
    assert len(ids) == 3 and tok.decode(ids) == "a<|user|>b"
    with pytest.raises(ValueError, match="not in this char"):
        tok.encode("z")


def test_clip_matches_open_clip():
    import open_clip

    texts = ["a photo of a cat", "A Diagram of the Digit 7!"]
    ours, mask = ClipTokenizer()(texts)
    theirs = open_clip.get_tokenizer("ViT-B-32")(texts)
    assert ours.shape == (2, 77) and (ours == theirs).all()
    assert ClipTokenizer().decode(ours[0]) == "a photo of a cat"


def _kinds(bpe):
    return {"bpe": bpe, "char": CharTokenizer(string.printable), "clip": ClipTokenizer(context_length=16)}


@pytest.mark.parametrize("kind", ["bpe", "char", "clip"])
def test_bad_text_says_what_was_given(bpe, kind):
    tok = _kinds(bpe)[kind]
    with pytest.raises(TypeError, match="expected a str, got bytes; decode it first"):
        tok.encode(b"the fox")
    with pytest.raises(TypeError, match="expected a str, got int"):
        tok.encode(7)
    with pytest.raises(ValueError, match="character 2 .* lone surrogate"):
        tok.encode("ab\udc80c")
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a str, got bytes") if kind == "bpe" else \
            pytest.raises(TypeError, match="got bytes"):
        (tok.encode_many if kind == "bpe" else tok.encode_batch)(["ok", b"no"])


@pytest.mark.parametrize("kind", ["bpe", "char", "clip"])
def test_decode_outside_the_vocabulary_names_the_id(bpe, kind):
    tok = _kinds(bpe)[kind]
    for bad in (tok.vocab_size, -1, 10**6):
        with pytest.raises(ValueError, match=f"token id {bad} is outside"):
            tok.decode([1, bad])
    with pytest.raises(TypeError, match="token ids"):
        tok.decode([1.5])
    assert tok.decode(torch.tensor(tok.encode("the fox"))) == tok.decode(tok.encode("the fox"))


def test_encode_batch_max_len_zero_is_refused(bpe):
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        bpe.encode_batch(["the fox"], max_len=0)
    with pytest.raises(TypeError, match="max_len"):
        bpe.encode_batch(["the fox"], max_len=2.5)
    ids, mask = bpe.encode_batch(["the quick brown fox"], max_len=1)
    assert ids.tolist() == [[bpe.eos_id]] and mask.all()
    with pytest.raises(ValueError, match="max_len must be >= 1"):  # CLIP's default context did not hide it
        ClipTokenizer(context_length=16).encode_batch(["a cat"], max_len=0)


SPECIAL_CASES = {"bpe": ("<|endoftext|>", "<|pad|>"), "char": ("<|endoftext|>", "<|pad|>"),
                 "clip": ("<end_of_text>", "<start_of_text>")}


@pytest.mark.parametrize("kind", ["bpe", "char", "clip"])
def test_special_strings_in_user_text_are_plain_text_unless_allowed(bpe, kind):
    tok = _kinds(bpe)[kind]
    eos, other = SPECIAL_CASES[kind]
    text = f"the fox{eos}said {other}hi"
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())  # no special id forged from user text
    if kind != "clip":  # open_clip's BPE is lossy (lower-case, spaces): the others round-trip exactly
        assert tok.decode(ids) == text
    everything = tok.encode(text, allowed_special="all")
    assert tok.special_tokens[eos] in everything and tok.special_tokens[other] in everything
    only_eos = tok.encode(text, allowed_special={eos})
    assert tok.special_tokens[eos] in only_eos and tok.special_tokens[other] not in only_eos
    with pytest.raises(ValueError, match="allowed_special: .* not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(TypeError, match="allowed_special"):
        tok.encode(text, allowed_special=eos)


def test_clip_special_strings_any_case_are_plain_text():
    tok = ClipTokenizer(context_length=16)
    assert tok.tok.eot_token_id not in tok.encode("a cat <END_OF_TEXT>")
    assert tok.encode("a cat <END_OF_TEXT>", allowed_special="all")[-1] == tok.tok.eot_token_id


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["<|endoftext|>", "<|pad|>", "<|", "|>", "endoftext", " ", "the ", "fox", "é",
                                 "\n"]), max_size=12).map("".join))
def test_bpe_plain_encoding_round_trips_and_forges_nothing(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text and not set(ids) & set(bpe.special_tokens.values())
    assert bpe.encode_many([text, "the fox"]) == [ids, bpe.encode("the fox")]
    if not any(s in text for s in bpe.special_tokens):  # the plain path is HF's own pipeline
        assert bpe._plain(text) == bpe.hf.encode(text, add_special_tokens=False).ids


def test_save_replaces_the_folder_whole_and_a_failed_save_keeps_the_old(bpe, tmp_path, monkeypatch):
    folder = tmp_path / "tok"
    bpe.save(folder)
    (folder / "stale.txt").write_text("from an older save")
    char = CharTokenizer.train("abc")
    char.save(folder)
    assert not (folder / "stale.txt").exists() and load_tokenizer(folder).kind == "char"
    assert oct((folder / "tokenizer_config.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~_umask())

    def boom(path):
        (path / "half-written").write_text("x")
        raise OSError("disk full")
    monkeypatch.setattr(bpe, "_save", boom)
    with pytest.raises(OSError, match="disk full"):
        bpe.save(folder)
    assert load_tokenizer(folder).kind == "char" and sorted(os.listdir(tmp_path)) == ["tok"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_load_names_a_broken_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: not a JSON tokenizer config"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(ValueError, match="tokenizer_config.json: unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)
