"""A Hugging Face tokenizer.json as an mmfm tokenizer: round trips, special tokens, gpt_pretrain tokenizer=
choices, and a GPT converted from (tiny, random) HF GPT-2 that keeps its tokenizer through save/load and
recipes/generate.py. Nothing is downloaded: the tokenizer is trained here with the `tokenizers` library."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import mmfm
from mmfm.tokenizers import HFJsonTokenizer, load_hf_tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [f"the king {i} spoke to the lord of the night, and the night was long. café ünïcode" for i in range(200)]
RUN = ["--max-steps", "3", "time_budget_s=0", "block_size=16", "batch_size=2", "val_tokens=64", "sample_tokens=0",
       "val_every=1000"]


def _recipe(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}_hftok", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_tokenizer(folder: Path, config: dict | None = None, vocab: int = 320) -> Path:
    """A GPT-2-style byte-level BPE tokenizer.json (with <|endoftext|> and <pad>) under `folder`."""
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(CORPUS, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    hf.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.json"


def _jsonl(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"text": t}) for t in CORPUS[:60]))
    return path


def test_tokenizer_json_round_trips_with_its_special_tokens(tmp_path):
    file = _train_tokenizer(tmp_path / "gpt", {"eos_token": {"content": "<|endoftext|>"}, "pad_token": "<pad>"})
    tok = load_hf_tokenizer(file)
    assert isinstance(tok, HFJsonTokenizer) and tok.vocab_size == 320
    assert tok.eos_id == tok.token_to_id("<|endoftext|>") == 0 and tok.pad_id == tok.token_to_id("<pad>") == 1
    text = "the lord spoke: café ünïcode, 12 日本"
    assert tok.decode(tok.encode(text)) == text
    assert load_hf_tokenizer(file.parent).encode(text) == tok.encode(text)  # the folder works too
    back = load_tokenizer(tok.save(tmp_path / "saved"))
    assert isinstance(back, HFJsonTokenizer) and back.encode(text) == tok.encode(text)
    assert (back.eos_id, back.pad_id, back.vocab_size) == (tok.eos_id, tok.pad_id, tok.vocab_size)
    ids, mask = back.encode_batch(["the king", "the"])
    assert ids[1, -1] == back.pad_id and not mask[1, -1] and ids[0, -1] == back.eos_id


def test_special_tokens_without_a_config(tmp_path):
    (tmp_path / "t").mkdir()
    file = _train_tokenizer(tmp_path / "t")
    tok = load_hf_tokenizer(file)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<pad>"  # found by their usual names
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_hf_tokenizer(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_hf_tokenizer(tmp_path / "missing.json")


@pytest.mark.parametrize("kind", ["json", "bpe"])
def test_pretrain_with_a_chosen_tokenizer(tmp_path, kind):
    file = _train_tokenizer(tmp_path / "gpt")
    spec = str(file) if kind == "json" else "bpe"
    out = tmp_path / "run"
    _recipe("gpt_pretrain").main(["--data", str(_jsonl(tmp_path / "c.jsonl")), "--out", str(out),
                                  "--preset", "gpt-test", f"tokenizer={spec}", "bpe_vocab=300", *RUN])
    model, metrics = mmfm.build_model(out / "model"), json.loads((out / "metrics.json").read_text())
    saved = json.loads((out / "model" / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["kind"] == ("hf" if kind == "json" else "bpe") and metrics["data_info/tokenizer"] == spec
    assert model.config.vocab_size == model.tokenizer.vocab_size == (320 if kind == "json" else 300)
    if kind == "json":
        assert model.tokenizer.encode(CORPUS[0]) == load_hf_tokenizer(file).encode(CORPUS[0])


def _tiny_gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def test_converted_gpt2_keeps_its_tokenizer_through_save_load_and_generate(tmp_path, capsys):
    from mmfm.interop import from_hf_gpt2

    file = _train_tokenizer(tmp_path / "gpt2", {"eos_token": "<|endoftext|>"})
    hf = _tiny_gpt2(320)
    hf.save_pretrained(tmp_path / "gpt2")  # config.json + model.safetensors beside tokenizer.json
    gpt = from_hf_gpt2(tmp_path / "gpt2")
    assert isinstance(gpt.tokenizer, HFJsonTokenizer)
    gpt.save_pretrained(tmp_path / "mm")
    loaded = mmfm.build_model(tmp_path / "mm")
    tok = load_hf_tokenizer(file)
    assert loaded.tokenizer.encode(CORPUS[3]) == tok.encode(CORPUS[3]) and loaded.tokenizer.eos_id == tok.eos_id

    prompt = "the king spoke"
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():  # HF's own greedy continuation, token by token
        for _ in range(8):
            ids = torch.cat([ids, hf(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    expected = prompt + tok.decode(ids[0, len(tok.encode(prompt)):].tolist())
    capsys.readouterr()
    texts = _recipe("generate").main([str(tmp_path / "mm"), "--prompt", prompt, "--max-new-tokens", "8",
                                      "--temperature", "0", "--device", "cpu"])
    assert texts == [expected] and capsys.readouterr().out.rstrip("\n") == expected

    other = from_hf_gpt2(hf, tokenizer=file)  # a model object plus a tokenizer.json path
    assert other.tokenizer.encode(prompt) == tok.encode(prompt)
    with pytest.raises(ValueError, match="do not fit the model's vocab_size 100"):
        from_hf_gpt2(_tiny_gpt2(100), tokenizer=file)


def test_pretraining_a_converted_gpt2_keeps_its_tokenizer(tmp_path):
    from mmfm.interop import from_hf_gpt2

    file = _train_tokenizer(tmp_path / "gpt2")
    from_hf_gpt2(_tiny_gpt2(320), tokenizer=file).save_pretrained(tmp_path / "mm")
    out = tmp_path / "run"
    _recipe("gpt_pretrain").main(["--data", str(_jsonl(tmp_path / "c.jsonl")), "--out", str(out),
                                  "--preset", str(tmp_path / "mm"), *[a for a in RUN if a != "block_size=16"]])
    # tokenizer=auto: the data is tokenized with the preset folder's tokenizer
    model = mmfm.build_model(out / "model")
    assert isinstance(model.tokenizer, HFJsonTokenizer) and model.config.vocab_size == 320
    assert model.tokenizer.encode(CORPUS[5]) == load_hf_tokenizer(file).encode(CORPUS[5])
    shutil.rmtree(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_generate_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    from mmfm.interop import from_hf_gpt2

    from_hf_gpt2(_tiny_gpt2(320), tokenizer=_train_tokenizer(tmp_path / "t")).save_pretrained(tmp_path / "mm")
    with pytest.raises(RuntimeError, match="--device cuda"):
        _recipe("generate").main([str(tmp_path / "mm"), "--device", "cuda", "--max-new-tokens", "2"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generate_and_final_validation_run_on_cuda(tmp_path, monkeypatch, capsys):
    module = _recipe("gpt_pretrain")
    seen = []
    real = module.evaluate
    monkeypatch.setattr(module, "evaluate", lambda model, data: seen.append(next(model.parameters()).device.type)
                        or real(model, data))
    out = tmp_path / "run"
    module.main(["--data", str(_jsonl(tmp_path / "c.jsonl")), "--out", str(out), "--preset", "gpt-test",
                 "--device", "cuda", *RUN])
    assert seen == ["cuda"]  # the final validation ran where the model trained
    texts = _recipe("generate").main([str(out / "model"), "--device", "cuda", "--max-new-tokens", "5",
                                      "--temperature", "0"])
    cpu = _recipe("generate").main([str(out / "model"), "--device", "cpu", "--max-new-tokens", "5",
                                    "--temperature", "0"])
    assert len(texts[0]) > 1 and texts == cpu  # greedy: the same text on either device
