"""Property test: `generate` on a gpt-test model with drawn arguments, valid and invalid mixed.

Each call either works (every argument valid) or raises a TypeError / ValueError raised in mmfm's own code
whose message names one of the invalid arguments; none runs longer than a few seconds."""
import math
import time
import traceback
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmfm
from mmfm.models.generation import generate
from mmfm.tokenizers import CharTokenizer

VOCAB = 256
MMFM_DIR = Path(mmfm.__file__).resolve().parent
CHARS = [chr(i) for i in range(32, 32 + VOCAB - 2)]  # + pad and end-of-text: exactly the model's vocabulary


def _arg(valid, invalid):
    """(value, is_valid) pairs from the two strategies."""
    return st.one_of(valid.map(lambda v: (v, True)), invalid.map(lambda v: (v, False)))


ids = st.integers(0, VOCAB - 1)
ARGS = {
    "prompts": _arg(st.one_of(st.lists(st.lists(ids, min_size=1, max_size=6), min_size=1, max_size=3),
                              st.text(alphabet="abcxyz", min_size=1, max_size=8),
                              st.lists(ids, min_size=1, max_size=5).map(lambda r: torch.tensor(r))),
                    st.one_of(st.just([[]]), st.just(42), st.just([[1.5, 2.0]]), st.just(torch.tensor([[0.5]])),
                              st.lists(st.one_of(st.integers(VOCAB, 10**6), st.integers(-10**6, -1)),
                                       min_size=1, max_size=3).map(lambda r: [[1] + r]))),
    "max_new_tokens": _arg(st.integers(0, 8),
                           st.one_of(st.integers(-10**6, -1), st.none(), st.floats(0, 8), st.just("3"))),
    "temperature": _arg(st.one_of(st.just(0), st.floats(0, 5)),
                        st.one_of(st.floats(max_value=-1e-6), st.just(math.nan), st.just(math.inf),
                                  st.just(None), st.just("0.8"))),
    "top_k": _arg(st.one_of(st.none(), st.integers(1, 400)),
                  st.one_of(st.integers(-5, 0), st.floats(0.5, 50), st.just("5"))),
    "top_p": _arg(st.one_of(st.none(), st.floats(1e-3, 1.0)),
                  st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0001), st.just(math.nan))),
    "stop_tokens": _arg(st.one_of(st.none(), st.lists(ids, max_size=3)),
                        st.one_of(st.lists(st.integers(VOCAB, 10**5), min_size=1, max_size=2), st.just([1.0]),
                                  st.just("ab"), st.just(7))),
    "stop_strings": _arg(st.one_of(st.none(), st.lists(st.text(alphabet="abc", max_size=2), max_size=2)),
                         st.one_of(st.just("a"), st.just([1]), st.just(b"a"))),
    "pad_id": _arg(st.one_of(st.none(), ids), st.one_of(st.integers(VOCAB, 10**6), st.integers(-10, -1),
                                                        st.just(1.5))),
    "use_cache": _arg(st.booleans(), st.nothing()),
    "return_logprobs": _arg(st.booleans(), st.nothing()),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    gpt = mmfm.build_model("gpt-test", vocab_size=VOCAB).eval()  # block 64: 6 + 8 tokens stay inside
    gpt.tokenizer = CharTokenizer(CHARS)
    assert gpt.tokenizer.vocab_size == VOCAB
    return gpt


@settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries(ARGS))
def test_generate_works_or_refuses_naming_the_argument(model, drawn):
    kwargs = {k: v for k, (v, _) in drawn.items()}
    invalid = [k for k, (_, ok) in drawn.items() if not ok]
    start = time.perf_counter()
    try:
        out = generate(model, generator=torch.Generator().manual_seed(0), **kwargs)
    except (TypeError, ValueError) as e:
        assert invalid, f"valid arguments {kwargs} were refused: {e}"
        frame = Path(traceback.extract_tb(e.__traceback__)[-1].filename).resolve()
        assert MMFM_DIR in frame.parents, f"{type(e).__name__} raised in {frame}, not in mmfm: {e}"
        assert any(name in str(e) for name in invalid), f"message {str(e)!r} names none of {invalid}"
    else:
        assert not invalid, f"invalid {invalid} accepted: {kwargs}"
        assert out.tokens.shape[1] <= kwargs["max_new_tokens"] and (out.lengths <= out.tokens.shape[1]).all()
        assert ((out.tokens >= 0) & (out.tokens < VOCAB)).all()
    assert time.perf_counter() - start < 3.0
