"""Long-polls against everything else: N clients hold `GET /jobs/<id>?wait=30` on a job that never ends while
a probe times /healthz, a plain GET and a POST every 0.25 s. `llmos api` (gunicorn, 2 processes) on PostgreSQL +
Redis, run twice in turns: as now (300 threads a process, long-polls bounded to all but 16 of them: the
defaults) and as before (16 threads, no bound). Clients that get `X-Long-Poll: full` wait
their Retry-After and poll again, as a well-behaved client does.

    python bench/longpoll.py                      # 500 clients, 20 s per run
    python bench/longpoll.py --clients 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from intake import deployment, free_port, llmos_argv, start, stop, wait_healthy


async def holder(client: httpx.AsyncClient, url: str, headers: dict[str, str], until: float,
                 counts: dict[str, int]) -> None:
    while time.monotonic() < until:
        try:
            r = await client.get(url, headers=headers, timeout=40)
            full = r.headers.get("X-Long-Poll") == "full"
            counts["full" if full else "held"] += 1
            if full:
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        except httpx.HTTPError:
            counts["errors"] += 1
            await asyncio.sleep(0.5)


async def probe(client: httpx.AsyncClient, base: str, headers: dict[str, str], job_id: str, until: float,
                lat: dict[str, list[float]]) -> None:
    while time.monotonic() < until:
        for name, call in (("healthz", lambda: client.get(f"{base}/healthz", timeout=5)),
                           ("get", lambda: client.get(f"{base}/jobs/{job_id}", headers=headers, timeout=5)),
                           ("post", lambda: client.post(f"{base}/jobs", headers=headers, timeout=5,
                                                        json={"kind": "echo", "input": {}}))):
            t0 = time.perf_counter()
            try:
                r = await call()
                ok = r.status_code < 500
            except httpx.HTTPError:
                ok = False
            lat[name].append(time.perf_counter() - t0 if ok else float("inf"))
        await asyncio.sleep(0.25)


async def run(base: str, headers: dict[str, str], job_id: str, clients: int, seconds: float) -> dict:
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    counts = {"held": 0, "full": 0, "errors": 0}
    lat: dict[str, list[float]] = {"healthz": [], "get": [], "post": []}
    async with httpx.AsyncClient(limits=limits) as hold_client, httpx.AsyncClient() as probe_client:
        until = time.monotonic() + seconds
        url = f"{base}/jobs/{job_id}?wait=30"
        tasks = [asyncio.create_task(holder(hold_client, url, headers, until, counts)) for _ in range(clients)]
        await asyncio.sleep(5)  # let the holders arrive (500 connections and their threads)
        await probe(probe_client, base, headers, job_id, until, lat)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"counts": counts, "lat": lat}


def line(label: str, xs: list[float]) -> str:
    finite = [x for x in xs if x != float("inf")]
    failed = len(xs) - len(finite)
    if not finite:
        return f"    {label:8s} every one of {len(xs)} failed or timed out (5 s)"
    return (f"    {label:8s} p50 {statistics.median(finite) * 1000:7.1f} ms   max {max(finite) * 1000:7.1f} ms   "
            f"over 1 s: {sum(1 for x in finite if x > 1)}   failed/timed out: {failed} of {len(xs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12", help="Redis URL; its db is flushed")
    args = ap.parse_args()
    with deployment(args.pg_admin, args.redis) as (env, tmp, key):
        headers = {"Authorization": f"Bearer {key}"}
        results = {}
        for label, threads, bound in (("now: 300 threads, bound 284 (defaults)", "300", None),
                                      ("before: 16 threads, unbounded", "16", "0")):
            port = free_port()
            run_env = dict(env, **({"LLMOS_MAX_WAITING": bound} if bound is not None else {}))
            proc = start(llmos_argv("api", "--host", "127.0.0.1", "--port", str(port), "--threads", threads),
                         run_env, tmp / "api.log")
            try:
                wait_healthy(port, proc, tmp / "api.log")
                base = f"http://127.0.0.1:{port}"
                job = httpx.post(f"{base}/jobs", headers=headers, json={"kind": "echo", "input": {}}).json()
                results[label] = asyncio.run(run(base, headers, job["id"], args.clients, args.seconds))
            finally:
                stop(proc)
        print(f"{args.clients} clients long-polling ?wait=30 for {args.seconds:.0f} s; a probe every 0.25 s; "
              f"llmos api, 2 processes; {os.cpu_count()} CPUs")
        for label, res in results.items():
            c = res["counts"]
            print(f"  {label}: long-polls held {c['held']}, answered 'full' {c['full']}, errors {c['errors']}")
            for probe_name, xs in res["lat"].items():
                print(line(probe_name, xs))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
