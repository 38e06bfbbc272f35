"""/v1 latency beside the same request as a native job, in one run (services: PostgreSQL, Redis, `llmos api`
under gunicorn, one `llmos worker`).

Per sample, taking turns, with the worker otherwise idle:
- native: POST /jobs (a generate job) then GET /jobs/<id>?wait=60 until it ended: submit -> result;
- sync: POST /v1/chat/completions with the same messages and parameters: request -> answer;
- stream: the same with `stream: true`: request -> first content chunk (time to first token), and -> [DONE].

Printed: medians and p90 of each, the ratios sync/native and TTFT/native, and the number of content chunks.

    python bench/openai_latency.py                                  # smollm2-135m-instruct, 30 samples
    python bench/openai_latency.py --model tiny-random-llama --samples 100 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import requests
from intake import deployment, free_port, llmos_argv, start, stop, wait_healthy


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def native(base: str, h: dict[str, str], model: str, messages: list[dict], max_tokens: int) -> float:
    t0 = time.perf_counter()
    r = requests.post(f"{base}/jobs", headers=h, timeout=60, json={
        "kind": "generate", "model": model, "input": {"messages": messages}, "priority": 9,
        "params": {"max_new_tokens": max_tokens, "temperature": 0}})
    r.raise_for_status()
    job_id = r.json()["id"]
    while True:
        body = requests.get(f"{base}/jobs/{job_id}?wait=60", headers=h, timeout=70).json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            break
    assert body["status"] == "succeeded", body
    return time.perf_counter() - t0


def sync(base: str, h: dict[str, str], model: str, messages: list[dict], max_tokens: int) -> float:
    t0 = time.perf_counter()
    r = requests.post(f"{base}/v1/chat/completions", headers=h, timeout=120, json={
        "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
    r.raise_for_status()
    return time.perf_counter() - t0


def stream(base: str, h: dict[str, str], model: str, messages: list[dict], max_tokens: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first = None
    chunks = 0
    with requests.post(f"{base}/v1/chat/completions", headers=h, timeout=120, stream=True, json={
            "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                break
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
    return first if first is not None else float("nan"), time.perf_counter() - t0, chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12", help="Redis URL; its db is flushed")
    args = ap.parse_args()

    with deployment(args.pg_admin, args.redis) as (env, tmp, key):
        procs: list = []
        try:
            report(args, env, tmp, key, procs)
        finally:
            for p in reversed(procs):
                stop(p)


def report(args: argparse.Namespace, env: dict[str, str], tmp: Path, key: str, procs: list) -> None:
    """Start the API and one worker (into `procs`), take the samples in turns, print the figures."""
    port = free_port()
    procs.append(start(llmos_argv("api", "--host", "127.0.0.1", "--port", str(port)), env, tmp / "api.log"))
    wait_healthy(port, procs[-1], tmp / "api.log")
    procs.append(start(llmos_argv("worker", "--gpu-type", "cpu", "--concurrency", "8"), env, tmp / "worker.log"))
    base, h = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    for _ in range(3):  # model load, first batches
        native(base, h, args.model, messages, args.max_tokens)
        stream(base, h, args.model, messages, args.max_tokens)
    nat, syn, ttft, full, chunks = [], [], [], [], []
    for _ in range(args.samples):
        nat.append(native(base, h, args.model, messages, args.max_tokens))
        syn.append(sync(base, h, args.model, messages, args.max_tokens))
        first, total, n = stream(base, h, args.model, messages, args.max_tokens)
        ttft.append(first)
        full.append(total)
        chunks.append(n)
    print(f"model {args.model}, max_tokens {args.max_tokens}, temperature 0, {args.samples} samples taking "
          f"turns; {os.cpu_count()} CPUs; gunicorn + 1 worker (threads 8) on PostgreSQL + Redis")
    for label, xs in (("native job submit -> result", nat), ("/v1 sync chat request -> answer", syn),
                      ("/v1 stream: time to first token", ttft), ("/v1 stream: request -> [DONE]", full)):
        print(f"  {label:34s} p50 {statistics.median(xs) * 1000:8.1f} ms   p90 {percentile(xs, 90) * 1000:8.1f} ms")
    print(f"  sync / native (p50)               {statistics.median(syn) / statistics.median(nat):.2f}x")
    print(f"  TTFT / native (p50)               {statistics.median(ttft) / statistics.median(nat):.2f}x")
    print(f"  content chunks per stream         median {statistics.median(chunks):.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
