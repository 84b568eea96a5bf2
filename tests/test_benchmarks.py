"""The benchmark scripts run end to end at toy sizes and are fair by construction: every peer holds the same
weights (the same loss on the same batch), the same kernels and the same optimizer. Timings are not checked."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--batch-size", "2", "--block-size", "16",
        "--train-steps", "1", "--new-tokens", "4", "--prompt-len", "6", "--rounds", "1"]


def write_nanogpt(folder: Path) -> Path:
    """A stand-in for nanoGPT's model.py with its names and call signature (GPT2 layout, exact GELU)."""
    folder.mkdir()
    (folder / "model.py").write_text('''
from dataclasses import dataclass
import torch, torch.nn as nn, torch.nn.functional as F

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc, self.gelu, self.c_proj = nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd)
    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))

class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.c_attn, self.c_proj = c.n_head, nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)
    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        return self.c_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C))

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = nn.LayerNorm(c.n_embd), Attn(c), nn.LayerNorm(c.n_embd), MLP(c)
    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(c.vocab_size, c.n_embd), wpe=nn.Embedding(c.block_size, c.n_embd),
            h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]), ln_f=nn.LayerNorm(c.n_embd)))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
    def forward(self, idx, targets=None):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for b in self.transformer.h:
            x = b(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
''')
    return folder


def test_gpt_benchmark_peers_are_the_same_model(tmp_path):
    import gpt

    nano = write_nanogpt(tmp_path / "nanogpt")
    r = gpt.main(TINY + ["--nanogpt", str(nano), "--json", str(tmp_path / "gpt.json")])
    assert {"mmfm", "transformers", "nanogpt"} <= set(r["train_tokens_per_s"])
    losses = r["initial_loss"]
    assert losses["transformers"] == pytest.approx(losses["mmfm"], abs=1e-4)
    assert losses["nanogpt"] == pytest.approx(losses["mmfm"], abs=1e-4)
    assert r["params"]["nanogpt"] == r["params"]["transformers"] == r["params"]["mmfm"]
    if "litgpt" in r["train_tokens_per_s"]:  # installed by install.sh
        assert losses["litgpt"] == pytest.approx(losses["mmfm_rope"], abs=1e-4)
        assert r["params"]["litgpt"] == r["params"]["mmfm_rope"]
    assert "gelu" in r["settings"]["transformers"] and "fused AdamW" in r["settings"]["nanogpt"]
    for batch in ("batch1", "batch8"):
        assert r["generate_same_tokens"][batch] and r["generate_new_tokens_each"][batch] == [4]
        assert r["generate_ratio"][batch] > 0
    assert (tmp_path / "gpt.json").is_file()


def test_gpt_benchmark_only_generation_reports_the_thread_fair_ratio():
    import gpt

    r = gpt.main(TINY + ["--only", "generate"])
    assert r["train_tokens_per_s"] == {} and r["matmul_fp32_gflops"] is None
    for batch in ("batch1", "batch8"):
        assert r["generate_same_tokens"][batch] and r["generate_ratio_same_threads"][batch] > 0
        threads = r["generate_mmfm_decode_threads"][batch]
        extra = {k for k in r["generate_tokens_per_s"][batch] if k.endswith("_thread")}
        assert extra == (set() if threads == r["threads"] else
                         {f"transformers_{c}_cache_{threads}_thread" for c in ("dynamic", "static")})
    with pytest.raises(SystemExit):
        gpt.main(TINY + ["--only", "generate", "--rope-only"])


def test_gpt_benchmark_without_nanogpt_says_so(tmp_path, capsys):
    import gpt

    with pytest.raises(ValueError, match="--nanogpt"):
        gpt.main(TINY + ["--nanogpt", str(tmp_path)])  # a folder without model.py
    args = gpt.parse(TINY + ["--gelu", "tanh"])
    losses, models, settings, _ = gpt.build_contenders(args)
    assert "nanogpt" not in losses and "nanogpt: left out" in capsys.readouterr().out
    assert "gelu_pytorch_tanh" in settings["transformers"]
    x = torch.randint(0, 78, (2, 16))
    assert float(losses["transformers"](x, x)) == pytest.approx(float(losses["mmfm"](x, x)), abs=1e-4)


def test_clip_benchmark_model_for_model_first():
    import clip

    r = clip.main(["--preset", "clip-test", "--batch", "4", "--steps", "1", "--caption-len", "4"])
    assert r["initial_loss"]["open_clip"] == pytest.approx(r["initial_loss"]["mmfm"], abs=1e-4)
    assert r["ratio_model_for_model"] > 0 and r["ratio_pipeline"] > 0
    assert list(r["samples_per_s"])[:2] == ["open_clip", "mmfm"]


def test_dit_benchmark_reports_both_sizes():
    import dit

    (row,) = dit.main(["--configs", "dit-test", "--train-iters", "1", "--sample-steps", "2", "--rounds", "1"])
    assert row["params_diffusers"] > row["params_mmfm"] > 0  # per-block embedders in diffusers
    assert row["gflop_per_image_diffusers"] > 0 and row["gflop_per_image_mmfm"] > 0
    assert all(row[k] > 0 for k in ("train_speedup", "train_speedup_per_param", "train_speedup_per_flop",
                                    "sample_speedup"))
