"""Soak under faults: N jobs through the real API and several workers while a random worker is killed (-9)
every K seconds and Redis is restarted (empty) once. Prints accepted, succeeded, failed, lost, duplicated and
the p50/p99 submit-to-finish latency. Lost and duplicated must be 0.

    python bench/soak.py --jobs 10000 --workers 3 --kill-every 20

Needs PostgreSQL at 127.0.0.1:5432 (a database is created and dropped) and redis-server on PATH (its own,
on a spare port).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("LLMOS_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, workdir: str) -> None:
        self.port, self.workdir, self.proc = free_port(), workdir, None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.workdir], stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16, help="task threads per worker")
    ap.add_argument("--kill-every", type=float, default=20.0, help="seconds between worker kills")
    ap.add_argument("--submitters", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="llmos-soak-")
    dbname = f"llmos_soak_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{dbname}"'))
    db_url = PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
    rds = Redis(work)
    rds.start()
    env = dict(os.environ, LLMOS_ENV="test", LLMOS_DATABASE_URL=db_url, LLMOS_BROKER_URL=f"redis://127.0.0.1:{rds.port}/0",
               LLMOS_DATA_DIR=work, LLMOS_MODEL_DIR=str(ROOT / ".llmos" / "bench-models"), HF_HUB_OFFLINE="1",
               LLMOS_HEARTBEAT_INTERVAL_S="1", LLMOS_WORKER_LOST_AFTER_S="5", LLMOS_RECONCILE_INTERVAL_S="1",
               LLMOS_REPUBLISH_AFTER_S="10", LLMOS_RELAY_INTERVAL_S="1", TOKENIZERS_PARALLELISM="false")
    llmos = [sys.executable, "-m", "app.cli"]
    subprocess.run([*llmos, "db", "upgrade"], env=env, check=True, capture_output=True)
    key = subprocess.run([*llmos, "keys", "create", "--owner", "soak", "--rate-limit", "1000000/minute"],
                         env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    port = free_port()
    logs = open(Path(work) / "processes.log", "wb")  # noqa: SIM115 - closed at the end
    api = subprocess.Popen([*llmos, "api", "--port", str(port), "--workers", "2"], env=env, stdout=logs,
                           stderr=subprocess.STDOUT)
    workers: list[subprocess.Popen] = []

    def start_worker() -> None:
        workers.append(subprocess.Popen([*llmos, "worker", "--gpu-type", "cpu", "--concurrency",
                                         str(args.concurrency), "--loglevel", "WARNING"], env=env, stdout=logs,
                                        stderr=subprocess.STDOUT))

    for _ in range(args.workers):
        start_worker()
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{base}/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "soak"},
            "params": {"max_new_tokens": 4, "min_new_tokens": 4, "temperature": 0}}
    accepted: list[str] = []
    rejected = 0
    lock = threading.Lock()
    done = threading.Event()
    kills = 0

    def submit(i: int) -> None:
        nonlocal rejected
        for attempt in range(20):  # a client retrying with its Idempotency-Key, as a real one would
            try:
                r = session.post(f"{base}/jobs", json=body, headers={**headers, "Idempotency-Key": f"soak-{i}"},
                                 timeout=30)
                if r.status_code == 202:
                    with lock:
                        accepted.append(r.json()["id"])
                    return
            except requests.RequestException:
                pass
            time.sleep(min(0.1 * 2**attempt, 5))
        with lock:
            rejected += 1

    def chaos() -> None:
        nonlocal kills
        restarted = False
        while not done.wait(args.kill_every):
            live = [w for w in workers if w.poll() is None]
            if live:
                victim = random.choice(live)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills += 1
                start_worker()
            if not restarted and len(accepted) > args.jobs // 2:
                rds.kill()
                rds.start()  # empty: no persistence
                restarted = True
                print(f"  redis restarted at {len(accepted)} accepted", flush=True)

    t0 = time.monotonic()
    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    with ThreadPoolExecutor(args.submitters) as pool:
        list(pool.map(submit, range(args.jobs)))
    submit_s = time.monotonic() - t0
    print(f"  submitted {len(accepted)} in {submit_s:.1f}s ({len(accepted) / submit_s:.0f}/s)", flush=True)
    eng = create_engine(db_url.replace("postgresql+psycopg", "postgresql+psycopg"))
    while time.monotonic() - t0 < args.timeout:
        with eng.connect() as c:
            open_jobs = c.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued','running')")).scalar()
        if open_jobs == 0:
            break
        time.sleep(2)
    done.set()
    total_s = time.monotonic() - t0
    with eng.connect() as c:
        status = dict(c.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
        ids = set(c.execute(text("SELECT id FROM jobs")).scalars())
        dup = c.execute(text(
            "SELECT count(*) FROM (SELECT job_id FROM job_events WHERE type IN ('succeeded','failed') "
            "GROUP BY job_id HAVING count(*) > 1) d")).scalar()
        lat = c.execute(text(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) "
            "FROM jobs WHERE status = 'succeeded'")).one()
        lost_workers = c.execute(text("SELECT count(*) FROM job_events WHERE type = 'worker_lost'")).scalar()
        republished = c.execute(text("SELECT count(*) FROM job_events WHERE type = 'republished'")).scalar()
    lost = len(set(accepted) - ids) + status.get("queued", 0) + status.get("running", 0)
    print(f"jobs={args.jobs} workers={args.workers}x{args.concurrency} kill_every={args.kill_every}s "
          f"kills={kills} redis_restarts=1")
    print(f"accepted={len(accepted)} rejected={rejected} succeeded={status.get('succeeded', 0)} "
          f"failed={status.get('failed', 0)} lost={lost} duplicated={dup}")
    print(f"worker_lost_events={lost_workers} republished={republished} wall={total_s:.1f}s "
          f"throughput={status.get('succeeded', 0) / total_s:.1f} jobs/s")
    print(f"latency submit->finish p50={lat[0]:.2f}s p99={lat[1]:.2f}s")
    for p in [api, *workers]:
        if p.poll() is None:
            p.terminate()
    for p in [api, *workers]:
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
    rds.kill()
    logs.close()
    eng.dispose()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
    sys.exit(0 if lost == 0 and dup == 0 else 1)


if __name__ == "__main__":
    main()
