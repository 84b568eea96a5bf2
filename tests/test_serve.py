"""mmfm serve through FastAPI's TestClient: OpenAI response shapes, streaming, sampling options, and a 4xx in
OpenAI's error shape for every kind of bad request."""
import base64
import io
import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mmfm.models.generation import generate
from mmfm.serve import create_app, load_services
from mmfm.serve.testing import CLASSES, tiny_folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny_folders(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(folders):
    app = create_app(load_services(folders.values(), max_batch=8), max_body_bytes=2**20)
    with TestClient(app) as c:
        c.app_services = app.state.services
        yield c


def png(color=(200, 10, 10), size=(40, 30), data_url=False) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    b = base64.b64encode(buf.getvalue()).decode()
    return f"data:image/png;base64,{b}" if data_url else b


def events(text: str) -> list:
    """SSE payloads in order; the last is '[DONE]'."""
    out = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert out[-1] == "[DONE]"
    return [json.loads(x) for x in out[:-1]]


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "models": ["gpt", "clip", "dit"]}
    data = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["object"], m["family"]) for m in data] == [("gpt", "model", "gpt"), ("clip", "model", "clip"),
                                                                    ("dit", "model", "dit")]
    assert data[0]["chat"] is True and data[2]["classes"] == CLASSES
    assert client.get("/v1/models/clip").json()["embedding_dim"] == 32
    assert client.get("/").status_code == 200 and "mmfm" in client.get("/").text


def test_completion_matches_generate(client):
    svc = client.app_services["gpt"]
    r = client.post("/v1/completions", json={"model": "gpt", "prompt": ["Hello", "Hi there"], "max_tokens": 12,
                                             "temperature": 0}).json()
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert [c["index"] for c in r["choices"]] == [0, 1]
    ref = generate(svc.model, ["Hello", "Hi there"], 12, temperature=0.0, stop_tokens=[svc.tok.eos_id])
    for c, ids in zip(r["choices"], ref.tolist()):
        ids = [i for i in ids if i != svc.tok.eos_id]
        assert c["text"] == svc.tok.decode(ids)
        assert c["finish_reason"] == ("length" if len(ids) == 12 else "stop")
    assert r["usage"]["prompt_tokens"] == 5 + 8
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]


def test_token_id_prompt_and_stop_string(client):
    svc = client.app_services["gpt"]
    ids = svc.tok.encode("abc")
    full = client.post("/v1/completions", json={"model": "gpt", "prompt": ids, "max_tokens": 20,
                                                "temperature": 0}).json()["choices"][0]["text"]
    assert full == client.post("/v1/completions", json={"model": "gpt", "prompt": "abc", "max_tokens": 20,
                                                        "temperature": 0}).json()["choices"][0]["text"]
    stop = full[3:5]
    cut = client.post("/v1/completions", json={"model": "gpt", "prompt": "abc", "max_tokens": 20, "temperature": 0,
                                               "stop": [stop, "\u2603"]}).json()["choices"][0]
    assert cut["text"] == full[:full.find(stop)] and cut["finish_reason"] == "stop"


def test_seed_n_and_top_p(client):
    body = {"model": "gpt", "prompt": "ab", "max_tokens": 16, "temperature": 1.5, "n": 3, "seed": 7}
    a = [c["text"] for c in client.post("/v1/completions", json=body).json()["choices"]]
    b = [c["text"] for c in client.post("/v1/completions", json=body).json()["choices"]]
    assert a == b and len(set(a)) > 1  # reproducible, and the n choices differ
    c = [c["text"] for c in client.post("/v1/completions", json={**body, "seed": 8}).json()["choices"]]
    assert c != a
    greedy = client.post("/v1/completions", json={**body, "n": 1, "temperature": 0}).json()["choices"][0]["text"]
    tiny_p = client.post("/v1/completions", json={**body, "n": 1, "top_p": 1e-6}).json()["choices"][0]["text"]
    assert tiny_p == greedy  # nucleus of one token = greedy


def test_stream_completion_equals_non_stream(client):
    body = {"model": "gpt", "prompt": "Hello", "max_tokens": 15, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    r = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = events(r.text)
    assert "".join(e["choices"][0]["text"] for e in ev if e["choices"]) == whole["text"]
    assert [e["choices"][0]["finish_reason"] for e in ev if e["choices"]][-1] == whole["finish_reason"]
    assert ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] == 15


def test_chat_template_and_stream(client):
    svc = client.app_services["gpt"]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    r = client.post("/v1/chat/completions", json={"model": "gpt", "messages": msgs, "max_tokens": 10,
                                                  "temperature": 0}).json()
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    from mmfm.align.chat import END, Turn, encode_turns

    ids = encode_turns(svc.tok, [Turn("system", "Be brief."), Turn("user", "Hi")], add_generation_prompt=True)[0]
    assert r["usage"]["prompt_tokens"] == len(ids)
    ref = generate(svc.model, [ids], 10, temperature=0.0, stop_tokens=[svc.tok.token_to_id(END), svc.tok.eos_id])
    assert r["choices"][0]["message"]["content"] == svc.tok.decode(
        [i for i in ref.tolist()[0] if i not in (svc.tok.token_to_id(END), svc.tok.eos_id)])
    ev = events(client.post("/v1/chat/completions", json={"model": "gpt", "messages": msgs, "max_tokens": 10,
                                                          "temperature": 0, "stream": True}).text)
    assert ev[0]["object"] == "chat.completion.chunk" and ev[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in ev)
    assert text == r["choices"][0]["message"]["content"]
    assert ev[-1]["choices"][0]["finish_reason"] == r["choices"][0]["finish_reason"]


def test_clip_embeddings_and_classify(client):
    svc = client.app_services["clip"]
    r = client.post("/v1/embeddings", json={"model": "clip", "input": ["a red square", png(data_url=True),
                                                                       {"image": png()}]}).json()
    vecs = torch.tensor([d["embedding"] for d in r["data"]])
    assert vecs.shape == (3, 32) and torch.allclose(vecs.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(vecs[1], vecs[2])  # a data URL and plain base64 are the same image
    ids = svc.tok.encode_batch(["a red square"], max_len=16)[0]
    assert torch.allclose(vecs[0], svc.model.encode_text(ids)[0], atol=1e-5)
    b64 = client.post("/v1/embeddings", json={"model": "clip", "input": "a red square",
                                              "encoding_format": "base64"}).json()["data"][0]["embedding"]
    import numpy as np

    assert np.allclose(np.frombuffer(base64.b64decode(b64), dtype="<f4"), vecs[0].numpy(), atol=1e-6)
    c = client.post("/v1/classify", json={"model": "clip", "image": png(), "labels": ["red", "green", "blue"],
                                          "template": "a {} thing"}).json()
    probs = [x["probability"] for x in c["labels"]]
    assert sorted(x["label"] for x in c["labels"]) == ["blue", "green", "red"]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5


def test_dit_images(client):
    body = {"model": "dit", "prompt": "square", "n": 2, "steps": 2, "seed": 3}
    r = client.post("/v1/images/generations", json=body).json()
    assert len(r["data"]) == 2 and r["seed"] == 3
    im = Image.open(io.BytesIO(base64.b64decode(r["data"][0]["b64_json"])))
    assert im.size == (16, 16) and im.mode == "L"
    assert r["data"] == client.post("/v1/images/generations", json=body).json()["data"]  # the seed reproduces


BAD = [  # (endpoint, raw body, status, param)
    ("/v1/completions", "{not json", 400, None),
    ("/v1/completions", "[1, 2]", 400, None),
    ("/v1/completions", '{"prompt": "a"}', 400, "model"),
    ("/v1/completions", '{"model": "nope", "prompt": "a"}', 404, "model"),
    ("/v1/completions", '{"model": "clip", "prompt": "a"}', 400, "model"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "max_tokens": "5"}', 400, "max_tokens"),
    ("/v1/completions", '{"model": "gpt", "prompt": 5}', 400, "prompt"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "max_tokens": 64}', 400, "max_tokens"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "max_tokens": 0}', 400, "max_tokens"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "temperature": -0.5}', 400, "temperature"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "temperature": NaN}', 400, "temperature"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "top_p": 0}', 400, "top_p"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "n": 0}', 400, "n"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', 400, "stop"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "seed": 1.5}', 400, "seed"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "frobnicate": 1}', 400, "frobnicate"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "echo": true}', 400, "echo"),
    ("/v1/completions", '{"model": "gpt", "prompt": "a", "presence_penalty": 0.5}', 400, "presence_penalty"),
    ("/v1/completions", '{"model": "gpt", "prompt": "\\u00e9t\\u00e9"}', 400, "prompt"),
    ("/v1/completions", '{"model": "gpt", "prompt": [[1, 2], [99999]]}', 400, "prompt"),
    ("/v1/completions", '{"model": "gpt", "prompt": []}', 400, "prompt"),
    ("/v1/chat/completions", '{"model": "gpt", "messages": []}', 400, "messages"),
    ("/v1/chat/completions", '{"model": "gpt", "messages": [{"role": "bot", "content": "x"}]}', 400,
     "messages[0].role"),
    ("/v1/chat/completions", '{"model": "gpt", "messages": [{"role": "user", "content": 3}]}', 400,
     "messages[0].content"),
    ("/v1/chat/completions", '{"model": "gpt", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}',
     400, "tools"),
    ("/v1/embeddings", '{"model": "clip", "input": []}', 400, "input"),
    ("/v1/embeddings", '{"model": "clip", "input": "x", "dimensions": 8}', 400, "dimensions"),
    ("/v1/embeddings", '{"model": "clip", "input": "data:image/png;base64,!!!"}', 400, "input"),
    ("/v1/embeddings", '{"model": "gpt", "input": "x"}', 400, "model"),
    ("/v1/classify", '{"model": "clip", "image": "aGVsbG8gd29ybGQ=", "labels": ["a"]}', 400, "image"),
    ("/v1/classify", '{"model": "clip", "image": "not base64 at all", "labels": ["a"]}', 400, "image"),
    ("/v1/classify", '{"model": "clip", "image": "aGVsbG8=", "labels": []}', 400, "labels"),
    ("/v1/images/generations", '{"model": "dit", "prompt": "hexagon"}', 400, "prompt"),
    ("/v1/images/generations", '{"model": "dit", "prompt": "circle", "steps": 0}', 400, "steps"),
    ("/v1/images/generations", '{"model": "dit", "prompt": "circle", "n": 100}', 400, "n"),
]


@pytest.mark.parametrize("endpoint,body,status,param", BAD)
def test_bad_requests_are_openai_shaped_4xx(client, endpoint, body, status, param):
    r = client.post(endpoint, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


def test_oversized_body_unknown_route_and_method(client):
    r = client.post("/v1/completions", content=b"x" * (2**20 + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()
    assert client.get("/v1/completions").status_code == 405
    # the workers are alive after all of the above
    assert client.post("/v1/completions", json={"model": "gpt", "prompt": "a", "max_tokens": 2}).status_code == 200
