"""Continuous batching: requests that join and leave a running batch get the tokens they would get alone."""
import concurrent.futures
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

import mmfm
from mmfm.models.generation import generate
from mmfm.serve import Engine, Job, create_app, load_services
from mmfm.serve.testing import tiny_gpt


def run_jobs(engine, prompts, maxes, stagger=0.0, **kw):
    outs, reasons = [[] for _ in prompts], [None] * len(prompts)
    done = threading.Semaphore(0)

    def finish(i, r):
        reasons[i] = r
        done.release()
    for i, (p, m) in enumerate(zip(prompts, maxes)):
        engine.submit(Job(p, m, on_token=lambda t, i=i: outs[i].append(t) and False,
                          on_finish=lambda r, i=i: finish(i, r), **kw))
        if stagger and i % 3 == 2:
            time.sleep(stagger)  # later jobs join a batch that is already decoding
    for _ in prompts:
        assert done.acquire(timeout=120)
    return outs, reasons


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_batched_greedy_equals_alone(pos):
    torch.manual_seed(0)
    model = mmfm.build_model("gpt-test", pos=pos).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 20, (18,), generator=g).tolist()
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]
    maxes = torch.randint(1, 40, (18,), generator=g).tolist()
    engine = Engine(model, max_batch=6)  # fewer rows than jobs: some wait for a row to free up
    try:
        outs, reasons = run_jobs(engine, prompts, maxes, stagger=0.005, temperature=0.0)
    finally:
        engine.stop()
    for p, m, out in zip(prompts, maxes, outs):
        assert out == generate(model, [p], m, temperature=0.0).tolist()[0]
    assert reasons == ["length"] * len(prompts)
    assert engine.steps < sum(maxes)  # rows really shared steps


def test_seeded_sampling_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = mmfm.build_model("gpt-test").eval()
    prompts, maxes = [[1, 2, 3], [4], [5, 6, 7, 8, 9]], [12, 20, 7]
    alone = []
    for p, m in zip(prompts, maxes):
        e = Engine(model, max_batch=1)
        alone.append(run_jobs(e, [p], [m], temperature=1.0, top_p=0.9, seed=11)[0][0])
        e.stop()
    e = Engine(model, max_batch=8)
    together = run_jobs(e, prompts, maxes, temperature=1.0, top_p=0.9, seed=11)[0]
    e.stop()
    assert together == alone


def test_cancel_and_stop_callbacks():
    model = mmfm.build_model("gpt-test").eval()
    e = Engine(model, max_batch=4)
    got, reasons = [], []
    done = threading.Event()
    job = Job([1, 2], 50, on_token=lambda t: got.append(t) or len(got) == 3,
              on_finish=lambda r: (reasons.append(r), done.set()), temperature=0.0)
    e.submit(job)
    assert done.wait(60) and reasons == ["stop"] and len(got) == 3
    outs, reasons = run_jobs(e, [[3]], [5], temperature=0.0)  # the engine keeps serving after a stop
    assert reasons == ["length"] and len(outs[0]) == 5
    e.stop()


def test_concurrent_http_requests_batch(tmp_path):
    services = load_services([tiny_gpt(tmp_path / "gpt")], max_batch=8)
    prompts = ["Hello", "a", "What is it", "xyz", "Hi there", "q", "abc d", "ok"]
    with TestClient(create_app(services)) as client:
        def one(p):
            return client.post("/v1/completions", json={"model": "gpt", "prompt": p, "max_tokens": 20,
                                                        "temperature": 0}).json()["choices"][0]["text"]
        alone = [one(p) for p in prompts]
        steps = services["gpt"].engine.steps
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(one, prompts))
        batched_steps = services["gpt"].engine.steps - steps
    assert together == alone
    assert batched_steps < steps  # fewer decode steps than one request at a time
