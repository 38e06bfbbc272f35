"""Generation through the whole platform beside in-process `generate`, in one run (issue 16's end-to-end targets).

The platform: `llmos api` under gunicorn and ONE `llmos worker --gpu-type cpu` on PostgreSQL + Redis, the real
SmolLM2-135M-Instruct weights, jobs submitted over HTTP and waited for with long-polls (`GET /jobs/<id>?wait=`).
The baseline: the same model in this process (transformers, no platform), in a thread of its own.

- concurrent: --jobs distinct prompts submitted at once (one client thread each: POST, then long-poll) vs ONE
  padded `model.generate` over the same prompts. Greedy, exactly --new-tokens tokens each (min = max), result
  cache off (`"cache": false`). Tokens/s = generated tokens / wall from the first POST to the last result.
- one at a time: --sequential prompts, each submitted after the previous result came back, vs `model.generate`
  on one prompt at a time. Same tokens/s.
- cached repeat: a deterministic request (temperature 0) answered once, then repeated --repeats times: the time
  from sending the repeat until its result is in hand (the POST's answer, or a GET if it were not yet terminal);
  beside it the same request with `"cache": false` (a real generation) for scale.

The two sides take turns for --rounds rounds (platform, baseline, platform, ...); medians and ratios printed. The
worker is idle while the baseline runs and the baseline is idle while the platform runs. A fresh database is made
for the run and dropped at the end; the Redis db given is flushed.

    python bench/platform_generate.py                                   # 32 jobs x 32 tokens, 3 rounds
    python bench/platform_generate.py --jobs 32 --new-tokens 64 --sequential 8 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import padded_generate, smollm  # noqa: E402
from intake import deployment, free_port, llmos_argv, start, stop, wait_healthy  # noqa: E402

from workers.engines.locks import in_own_thread  # noqa: E402
from workers.model_cache import ModelCache  # noqa: E402

MODEL = "smollm2-135m-instruct"
TERMINAL = ("succeeded", "failed", "cancelled")


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def prompts(n: int, salt: str) -> list[str]:
    return [f"{salt} {i}: Write a long story about a fox who learns to fly. " * 2 for i in range(n)]


class Client:
    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"}
        self.local = threading.local()  # one keep-alive connection per client thread

    def session(self) -> requests.Session:
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = requests.Session()
            s.headers.update(self.headers)
        return s

    def run(self, prompt: str, new_tokens: int, *, cache: bool = False) -> dict[str, Any]:
        """Submit a generate job and return it once it ended."""
        s = self.session()
        r = s.post(f"{self.base}/jobs", timeout=60, json={
            "kind": "generate", "model": MODEL, "input": {"prompt": prompt}, "cache": cache,
            "params": {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "temperature": 0}})
        r.raise_for_status()
        job = r.json()
        while job["status"] not in TERMINAL:
            job = s.get(f"{self.base}/jobs/{job['id']}?wait=60", timeout=70).json()
        assert job["status"] == "succeeded", job
        return job


def platform_concurrent(client: Client, texts: list[str], new_tokens: int) -> float:
    with ThreadPoolExecutor(len(texts)) as pool:
        t0 = time.perf_counter()
        jobs = list(pool.map(lambda p: client.run(p, new_tokens), texts))
        wall = time.perf_counter() - t0
    return sum(j["usage"]["completion_tokens"] for j in jobs) / wall


def platform_sequential(client: Client, texts: list[str], new_tokens: int) -> float:
    t0 = time.perf_counter()
    tokens = sum(client.run(p, new_tokens)["usage"]["completion_tokens"] for p in texts)
    return tokens / (time.perf_counter() - t0)


def inprocess_sequential(model: Any, tok: Any, texts: list[str], new_tokens: int) -> float:
    seconds = sum(in_own_thread(lambda t=t: padded_generate(model, tok, [t], new_tokens)) for t in texts)
    return len(texts) * new_tokens / seconds


def cached_repeats(client: Client, prompt: str, repeats: int) -> tuple[list[float], list[float], int]:
    """Seconds per cached repeat, seconds per uncached run of the same request, repeats answered from the cache."""
    client.run(prompt, 16, cache=True)  # answered by the model once: the cache now holds it
    hits, uncached = [], []
    cached_hits = 0
    for i in range(repeats):
        t0 = time.perf_counter()
        job = client.run(prompt, 16, cache=True)
        hits.append(time.perf_counter() - t0)
        cached_hits += bool(job["usage"].get("cached"))
        if i % max(1, repeats // 10) == 0:
            t0 = time.perf_counter()
            client.run(prompt, 16, cache=False)
            uncached.append(time.perf_counter() - t0)
    return hits, uncached, cached_hits


def measure(args: argparse.Namespace, env: dict[str, str], tmp: Path, key: str, model: Any, tok: Any,
            procs: list) -> None:
    """Start the API and one worker (into `procs`), take turns with the in-process baseline, print the figures."""
    port = free_port()
    procs.append(start(llmos_argv("api", "--host", "127.0.0.1", "--port", str(port)), env, tmp / "api.log"))
    wait_healthy(port, procs[-1], tmp / "api.log")
    procs.append(start(llmos_argv("worker", "--gpu-type", "cpu", "--concurrency", str(max(32, args.jobs))),
                       env, tmp / "worker.log"))
    client = Client(f"http://127.0.0.1:{port}", key)
    platform_concurrent(client, prompts(4, "warm-up"), 4)  # model load, first batches

    conc: dict[str, list[float]] = {"platform": [], "in-process": []}
    seq: dict[str, list[float]] = {"platform": [], "in-process": []}
    for r in range(args.rounds):
        texts = prompts(args.jobs, f"round {r}")
        conc["platform"].append(platform_concurrent(client, texts, args.new_tokens))
        conc["in-process"].append(args.jobs * args.new_tokens / in_own_thread(
            lambda texts=texts: padded_generate(model, tok, texts, args.new_tokens)))
        one = prompts(args.sequential, f"alone {r}")
        seq["platform"].append(platform_sequential(client, one, args.new_tokens))
        seq["in-process"].append(inprocess_sequential(model, tok, one, args.new_tokens))
    hits, uncached, n_cached = cached_repeats(client, "Name three primary colours.", args.repeats)

    print(f"\n{MODEL}, greedy, {args.new_tokens} new tokens per job, {args.rounds} rounds taking turns "
          f"(medians); {os.cpu_count()} CPU cores, no GPU; gunicorn + 1 worker on PostgreSQL + Redis")
    for label, d, base in ((f"{args.jobs} concurrent jobs", conc, "one padded generate over them"),
                           ("one job at a time", seq, "generate per prompt, one at a time")):
        p, b = statistics.median(d["platform"]), statistics.median(d["in-process"])
        print(f"  {label:<22} platform {p:7.1f} tok/s   in-process ({base}) {b:7.1f} tok/s   "
              f"ratio {p / b:.2f}x   (per round: "
              + " ".join(f"{x / y:.2f}" for x, y in zip(d["platform"], d["in-process"], strict=True)) + ")")
    print(f"  cached repeat (submit -> result, {len(hits)} repeats, {n_cached} marked usage.cached): "
          f"p50 {statistics.median(hits) * 1e3:.1f} ms  p90 {percentile(hits, 90) * 1e3:.1f} ms; "
          f"the same request uncached p50 {statistics.median(uncached) * 1e3:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=6, help="jobs run one at a time per round")
    ap.add_argument("--repeats", type=int, default=200, help="cached repeats")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/11", help="Redis URL; its db is flushed")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    cache = ModelCache(model_dir=Path(os.environ.get("LLMOS_MODEL_DIR", ROOT / ".llmos" / "bench-models")),
                       device="cpu", budget_bytes=2**34, max_batch=64)
    loaded = smollm(cache)
    model, tok = loaded.model, loaded.tokenizer

    with deployment(args.pg_admin, args.redis) as (env, tmp, key):
        procs: list = []
        try:
            measure(args, env, tmp, key, model, tok, procs)
        finally:
            for proc in reversed(procs):
                stop(proc)


if __name__ == "__main__":
    main()
