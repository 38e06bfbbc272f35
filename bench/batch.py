"""Batch vs one job per document, in the same run: documents/s accepted and documents/s processed on CPU, for
the tiny random model (generate) and MiniLM (embed), through the real API (gunicorn) and one real worker.
Also how long POST /batches takes to accept a large inline batch (stored, chunked, published; then cancelled).

    python bench/batch.py --docs 500 --large 100000

Needs PostgreSQL at 127.0.0.1:5432 (a database is created and dropped) and redis-server on PATH (its own, on a
spare port).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("LLMOS_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def documents(n: int) -> list[dict]:
    return [{"custom_id": f"d{i}", "text": f"Document {i}: the quarterly report on topic {i % 13} is ready."}
            for i in range(n)]


WORKLOADS = {
    "tiny-generate": {
        "model": "tiny-random-llama", "task": {"type": "generate", "template": "Summarize:\n{text}\nSummary:"},
        "params": {"max_new_tokens": 8, "min_new_tokens": 8, "temperature": 0},
        "job": lambda d: {"kind": "generate", "model": "tiny-random-llama",
                          "input": {"prompt": f"Summarize:\n{d['text']}\nSummary:"},
                          "params": {"max_new_tokens": 8, "min_new_tokens": 8, "temperature": 0}},
    },
    "minilm-embed": {
        "model": "all-minilm-l6-v2", "task": {"type": "embed"}, "params": {},
        "job": lambda d: {"kind": "embed", "model": "all-minilm-l6-v2", "input": {"text": d["text"]}},
    },
}


def run_batch(base: str, h: dict, name: str, docs: list[dict]) -> tuple[float, float]:
    w = WORKLOADS[name]
    t0 = time.monotonic()
    r = requests.post(f"{base}/batches", json={"documents": docs, "model": w["model"], "task": w["task"],
                                               "params": w["params"]}, headers=h, timeout=600)
    r.raise_for_status()
    accepted = time.monotonic() - t0
    b = r.json()
    while b["status"] not in FINAL:
        time.sleep(0.2)
        b = requests.get(f"{base}/batches/{b['id']}", headers=h, timeout=30).json()
    assert b["status"] == "succeeded" and b["request_counts"]["completed"] == len(docs), b
    return len(docs) / accepted, len(docs) / (time.monotonic() - t0)


def run_jobs(base: str, h: dict, name: str, docs: list[dict], db_url: str) -> tuple[float, float]:
    w = WORKLOADS[name]
    session = requests.Session()
    tag = secrets.token_hex(3)

    def submit(d: dict) -> str:
        body = w["job"](d)
        body["metadata"] = {"bench": tag}
        r = session.post(f"{base}/jobs", json=body, headers=h, timeout=60)
        r.raise_for_status()
        return r.json()["id"]

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, docs))
    accepted = time.monotonic() - t0
    eng = create_engine(db_url)
    try:
        while True:
            with eng.connect() as c:
                left = c.execute(text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status NOT IN "
                                      "('succeeded','failed','cancelled')"), {"ids": ids}).scalar()
            if left == 0:
                break
            time.sleep(0.2)
        with eng.connect() as c:
            ok = c.execute(text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status = 'succeeded'"),
                           {"ids": ids}).scalar()
    finally:
        eng.dispose()
    assert ok == len(docs), f"{ok} of {len(docs)} jobs succeeded"
    return len(docs) / accepted, len(docs) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=500, help="documents per workload")
    ap.add_argument("--large", type=int, default=100_000, help="inline documents for the acceptance-only run (0: skip)")
    ap.add_argument("--concurrency", type=int, default=32, help="worker task threads")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="llmos-bench-batch-")
    dbname = f"llmos_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{dbname}"'))
    db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
    port_r = free_port()
    rds = subprocess.Popen(["redis-server", "--port", str(port_r), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port_r).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    env = dict(os.environ, LLMOS_ENV="test", LLMOS_DATABASE_URL=db_url, LLMOS_BROKER_URL=f"redis://127.0.0.1:{port_r}/0",
               LLMOS_DATA_DIR=work, LLMOS_MODEL_DIR=str(ROOT / ".llmos" / "bench-models"), HF_HUB_OFFLINE="1",
               LLMOS_MAX_BATCH_REQUEST_BYTES=str(256 * 1024 * 1024), TOKENIZERS_PARALLELISM="false")
    llmos = [sys.executable, "-m", "app.cli"]
    subprocess.run([*llmos, "db", "upgrade"], env=env, check=True, capture_output=True)
    key = subprocess.run([*llmos, "keys", "create", "--owner", "bench", "--rate-limit", "1000000/minute"],
                         env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    port = free_port()
    logs = open(Path(work) / "processes.log", "wb")  # noqa: SIM115 - closed at the end
    procs = [
        subprocess.Popen([*llmos, "api", "--port", str(port), "--workers", "2"], env=env, stdout=logs,
                         stderr=subprocess.STDOUT),
        subprocess.Popen([*llmos, "worker", "--gpu-type", "cpu", "--concurrency", str(args.concurrency),
                          "--loglevel", "WARNING"], env=env, stdout=logs, stderr=subprocess.STDOUT),
    ]
    base = f"http://127.0.0.1:{port}"
    h = {"Authorization": f"Bearer {key}"}
    try:
        for _ in range(300):
            try:
                if requests.get(f"{base}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        print(f"cpu cores={os.cpu_count()} docs/workload={args.docs} worker threads={args.concurrency}")
        for name in WORKLOADS:  # warm: load the model once, outside the timings
            run_batch(base, h, name, documents(8))
        print(f"{'workload':<15} {'mode':<14} {'accepted docs/s':>16} {'processed docs/s':>17}")
        for name in WORKLOADS:
            docs = documents(args.docs)
            acc, proc = run_batch(base, h, name, docs)
            print(f"{name:<15} {'batch':<14} {acc:>16.0f} {proc:>17.1f}", flush=True)
            acc, proc = run_jobs(base, h, name, docs, db_url)
            print(f"{name:<15} {'job per doc':<14} {acc:>16.0f} {proc:>17.1f}", flush=True)
        if args.large:
            docs = documents(args.large)
            t0 = time.monotonic()
            r = requests.post(f"{base}/batches", json={"documents": docs, "model": "tiny-random-llama",
                                                       "task": {"type": "generate"}, "params": {"max_new_tokens": 1}},
                              headers=h, timeout=600)
            took = time.monotonic() - t0
            r.raise_for_status()
            requests.post(f"{base}/batches/{r.json()['id']}/cancel", headers=h, timeout=60)
            print(f"accept {args.large} inline documents: {took:.2f}s ({args.large / took:.0f} docs/s, "
                  f"{r.json()['request_counts']['total']} stored, {-(-args.large // 64)} chunks published)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        rds.kill()
        logs.close()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
