"""The official `openai` client against `mmfm serve` on a free loopback port (started and stopped here)."""
import numpy as np
import pytest

from mmfm.serve import create_app, load_services
from mmfm.serve.testing import RunningServer, tiny_clip, tiny_gpt

import openai  # in the dev extra


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_openai")
    services = load_services([tiny_gpt(root / "gpt"), tiny_clip(root / "clip")], max_batch=4)
    with RunningServer(create_app(services)) as url:
        yield url, services


def test_openai_client(server):
    url, services = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["gpt", "clip"]

    done = client.completions.create(model="gpt", prompt="Hello", max_tokens=8, temperature=0)
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.prompt_tokens == 5

    chunks = list(client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=8, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                           temperature=0)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    emb = client.embeddings.create(model="clip", input=["a cat", "a dog"])  # the client asks for base64
    vecs = np.array([d.embedding for d in emb.data])
    assert vecs.shape == (2, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gpt", prompt="x", max_tokens=1000)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
