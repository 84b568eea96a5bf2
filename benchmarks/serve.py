"""mmfm serve under load: tokens/s, request latency and time-to-first-token (p50/p99) at 1..32 concurrent streaming
clients, continuous batching (--max-batch 32) vs one request at a time (--max-batch 1).

    flock -x /tmp/mmfm-cpu.lock python benchmarks/serve.py --model runs/gpt_shakespeare/model

The server runs in its own process (`python -m mmfm.serve`), the clients (httpx, asyncio) in this one; each client
sends --requests streaming completions one after another. Writes --out (JSON) and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from mmfm.serve.testing import free_port

PROMPTS = ["ROMEO:\n", "JULIET:\nO ", "First Citizen:\n", "KING HENRY:\nNow ", "HAMLET:\nTo be", "MENENIUS:\nWhy, ",
           "LADY MACBETH:\n", "PROSPERO:\nThe "]


def start_server(model: str, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "mmfm.serve", model, "--port", str(port), "--max-batch", str(max_batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not come up: {' '.join(cmd)}")


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int,
                      seed: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft is None and event["choices"] and event["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return {"latency": time.perf_counter() - t0, "ttft": ttft if ttft is not None else time.perf_counter() - t0,
            "tokens": tokens}


async def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, url, model, PROMPTS[0], 4, 0)  # warm-up

        async def worker(c: int) -> list[dict]:
            return [await one_request(client, url, model, PROMPTS[(c + i) % len(PROMPTS)], max_tokens, c * 1000 + i)
                    for i in range(requests)]
        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    lat, ttft = np.array([r["latency"] for r in results]), np.array([r["ttft"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p99_s": float(np.percentile(lat, 99)), "ttft_p50_s": float(np.percentile(ttft, 50)),
            "ttft_p99_s": float(np.percentile(ttft, 99))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="runs/gpt_shakespeare/model", help="a saved GPT folder")
    p.add_argument("--clients", default="1,8,16,32", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=3, help="requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batches", default="32,1", help="server --max-batch values to compare (1: one at a time)")
    p.add_argument("--threads", type=int, default=None, help="server torch threads")
    p.add_argument("--out", default="runs/serve_bench.json")
    a = p.parse_args(argv)
    from mmfm.serve import model_id

    name, levels = model_id(Path(a.model)), [int(c) for c in a.clients.split(",")]
    rows = []
    for max_batch in [int(b) for b in a.batches.split(",")]:
        proc, url = start_server(a.model, max_batch, a.threads)
        try:
            for clients in levels:
                row = {"max_batch": max_batch, **asyncio.run(load(url, name, clients, a.requests, a.max_tokens))}
                rows.append(row)
                print(f"max_batch {max_batch:>2}  clients {clients:>2}: {row['tokens_per_s']:7.1f} tok/s  latency "
                      f"p50 {row['latency_p50_s']:.2f} p99 {row['latency_p99_s']:.2f} s  TTFT p50 "
                      f"{row['ttft_p50_s']:.3f} p99 {row['ttft_p99_s']:.3f} s", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    speedup = {c: next(r["tokens_per_s"] for r in rows if r["clients"] == c and r["max_batch"] != 1)
               / next(r["tokens_per_s"] for r in rows if r["clients"] == c and r["max_batch"] == 1)
               for c in levels} if len({r["max_batch"] for r in rows}) > 1 and 1 in {r["max_batch"] for r in rows} else {}
    for c, s in speedup.items():
        print(f"clients {c:>2}: batched / one-at-a-time tokens/s = {s:.2f}x")
    result = {"model": a.model, "max_tokens": a.max_tokens, "requests_per_client": a.requests, "rows": rows,
              "speedup": speedup, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
