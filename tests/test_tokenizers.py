import pytest
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
    ids = tok.encode("a<|user|>b")
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
