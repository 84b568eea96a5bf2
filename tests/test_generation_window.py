"""Generation past block_size with a KV cache (mmfm.models.windowed) equals its reference computation:
rotary positions - a forward pass with a banded causal mask of width block_size; learned positions - the
model re-run on each token's chunk (the window refilled with the last block_size // 2 tokens when full)."""
import pytest
import torch

import mmfm
import mmfm.nn.attention as attention

BLOCK = 64  # gpt-test


def model_with(pos: str):
    torch.manual_seed(0)
    return mmfm.build_model("gpt-test", pos=pos).eval()


def banded_logits(model, ids: list[int], monkeypatch) -> torch.Tensor:
    """Logits (T, V) of one row under a causal mask that also hides keys more than BLOCK - 1 back."""
    def banded(q_len, k_len, causal, key_padding_mask, device):
        q = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k = torch.arange(k_len, device=device)[None, :]
        return ((k <= q) & (k > q - BLOCK))[None, None]  # (1, 1, Tq, Tk)

    with monkeypatch.context() as m:
        m.setattr(attention, "build_attn_mask", banded)
        x = torch.tensor([ids])
        return model(x, key_padding_mask=torch.ones_like(x, dtype=torch.bool))[0]


def chunked_reference(model, ids: list[int], n_new: int) -> list[int]:
    """Greedy tokens when each step runs the model on its chunk: the prompt's last BLOCK tokens, and
    the last BLOCK // 2 tokens whenever the next position would be BLOCK."""
    seq, base = list(ids), max(0, len(ids) - BLOCK)
    for _ in range(n_new):
        if len(seq) - base > BLOCK:
            base = len(seq) - BLOCK // 2
        seq.append(int(model(torch.tensor([seq[base:]]))[0, -1].argmax()))
    return seq[len(ids):]


@pytest.mark.parametrize("prompt_len,n_new", [(3, 150), (70, 40)])  # several cache shifts; a prompt > block
def test_rope_rolling_cache_equals_banded_attention(prompt_len, n_new, monkeypatch):
    model = model_with("rope")
    prompt = torch.randint(1, 256, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    out = model.generate([prompt], n_new, temperature=0, return_logprobs=True)
    assert out.lengths.tolist() == [n_new]
    kept = prompt[-BLOCK:]
    seq = kept + out.tolist()[0]
    ref = banded_logits(model, seq, monkeypatch)[len(kept) - 1:-1]  # (n_new, V): the logits of each new token
    assert ref.argmax(-1).tolist() == out.tolist()[0]
    expect = torch.log_softmax(ref, -1).gather(-1, torch.tensor(out.tolist()[0])[:, None])[:, 0]
    assert torch.allclose(out.logprobs[0], expect, atol=1e-4)


@pytest.mark.parametrize("prompt_len,n_new", [(3, 150), (70, 40)])
def test_learned_positions_refill_equals_chunked_reference(prompt_len, n_new):
    model = model_with("learned")
    prompt = torch.randint(1, 256, (prompt_len,), generator=torch.Generator().manual_seed(2)).tolist()
    out = model.generate([prompt], n_new, temperature=0)
    assert out.tolist()[0] == chunked_reference(model, prompt, n_new)


def test_rolling_cache_ragged_rows_equal_each_row_alone():
    model = model_with("rope")
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [3], [40, 41, 42]]
    batched = model.generate(prompts, 120, temperature=0, return_logprobs=True)
    for i, p in enumerate(prompts):
        alone = model.generate([p], 120, temperature=0, return_logprobs=True)
        assert batched[i] == alone[0]
        assert torch.allclose(batched.logprobs[i], alone.logprobs[0], atol=1e-4)


def test_refill_ragged_batch_runs_each_row_on_its_batch_window():
    """Learned positions, rows of different lengths: the chunks are the batch's columns; each row's tokens
    equal the model run on its own real tokens of that column window."""
    model = model_with("learned")
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [3, 4]]
    out = model.generate(prompts, 100, temperature=0)
    width = max(map(len, prompts))
    cols = [[None] * (width - len(p)) + p + row for p, row in zip(prompts, out.tolist())]
    base = 0
    for n in range(100):
        cur = width + n
        if cur - base > BLOCK:
            base = cur - BLOCK // 2
        for row in cols:
            window = [t for t in row[base:cur] if t is not None]
            assert int(model(torch.tensor([window]))[0, -1].argmax()) == row[cur]


def test_inside_the_window_nothing_changes_and_stops_still_work():
    model = model_with("rope")
    a = model.generate([[1, 2, 3]], BLOCK - 3, temperature=0).tolist()
    b = model.generate([[1, 2, 3]], BLOCK - 3, temperature=0, use_cache=False).tolist()
    assert a == b
    long = model.generate([[1, 2, 3]], 100, temperature=0).tolist()[0]
    stop = long[80]
    first = long.index(stop)
    stopped = model.generate([[1, 2, 3]], 100, temperature=0, stop_tokens=[stop])
    assert stopped.tolist()[0] == long[:first + 1]
