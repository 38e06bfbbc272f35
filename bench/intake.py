"""POST /jobs intake: requests/s and latency of the LLM OS API beside a naive Flask endpoint, in one run.

Both targets run under gunicorn with the same settings (2 worker processes, gthread, 16 threads each, access log
to a file) against the same Postgres and Redis:

- llmos: `llmos api --workers 2`. Per request: authenticate the key, validate, write job + event + outbox row
  in one transaction, publish to Redis after commit, mark the outbox row sent.
- naive: the first version people write (`naive_app` below): insert one row with SQLAlchemy, then Celery
  `send_task` to Redis. No auth, no validation, no outbox.

The bench makes its own database (dropped at the end), runs `llmos db upgrade` and `llmos keys create` against
it, and uses Redis db 13 (flushed before and after). No worker runs: the jobs stay queued.

    python bench/intake.py                       # 2000 requests per target, 16 client threads
    python bench/intake.py --requests 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from flask import Flask, request
from sqlalchemy import JSON, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

HERE = Path(__file__).resolve().parent
BODY = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "Say hello."},
        "params": {"max_new_tokens": 16}}
NAIVE_QUEUE = "naive"
GUNICORN = ["--workers", "2", "--worker-class", "gthread", "--threads", "16", "--timeout", "90"]


# ---- the naive endpoint, served by gunicorn as `intake:naive_app()` ------------------------------------


class NaiveBase(DeclarativeBase):
    pass


class NaiveJob(NaiveBase):
    __tablename__ = "naive_jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


def naive_app() -> Flask:
    engine = create_engine(os.environ["BENCH_DATABASE_URL"], pool_size=10, max_overflow=20)
    celery = Celery("naive", broker=os.environ["BENCH_BROKER_URL"])
    app = Flask("naive")

    @app.post("/jobs")
    def submit() -> tuple[dict[str, str], int]:
        job_id = f"job_{secrets.token_hex(12)}"
        with Session(engine) as session:
            session.add(NaiveJob(id=job_id, status="queued", body=request.get_json()))
            session.commit()
        celery.send_task("naive.run_job", args=[job_id], queue=NAIVE_QUEUE)
        return {"id": job_id, "status": "queued"}, 202

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


# ---- processes -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llmos_argv(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("llmos")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "app.cli", *args]


def run_llmos(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(llmos_argv(*args), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"llmos {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def llmos_server(port: int) -> list[str]:
    return llmos_argv("api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2")


def naive_server(port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", *GUNICORN, "--access-logfile", "-", "--bind", f"127.0.0.1:{port}",
            "--chdir", str(HERE), "intake:naive_app()"]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server on :{port} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    sys.exit(f"server on :{port} not healthy after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


# ---- load ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    latencies: list[float]
    errors: list[str]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def drive(port: int, headers: dict[str, str], requests: int, concurrency: int) -> Result:
    """POST BODY to /jobs `requests` times from `concurrency` threads, each on its own keep-alive connection."""
    payload = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json", **headers}
    tickets = itertools.count()  # next() on a count is atomic under the GIL

    def client() -> tuple[list[float], list[str]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies: list[float] = []
        errors: list[str] = []
        while next(tickets) < requests:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/jobs", payload, headers)
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status == 202:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors.append(f"{resp.status} {answer[:200].decode(errors='replace')}")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                errors.append(repr(exc))
        conn.close()
        return latencies, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda _: client(), range(concurrency)))
    seconds = time.perf_counter() - t0
    return Result([x for lat, _ in outcomes for x in lat], [e for _, errs in outcomes for e in errs], seconds)


# ---- the run -------------------------------------------------------------------------------------------


def queued_messages(redis_client: Any, prefix: str) -> int:
    """Messages in the Redis lists of a queue (kombu's priority sub-queues are `<queue>:<n>`)."""
    keys = [k for k in redis_client.scan_iter(f"{prefix}*") if redis_client.type(k) == b"list"]
    return sum(redis_client.llen(k) for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per target (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests per target first (default 100)")
    parser.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="a Postgres URL allowed to CREATE DATABASE")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="Redis URL; its db is flushed")
    args = parser.parse_args()

    name = f"llmos_bench_{secrets.token_hex(4)}"
    admin = create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
    db_url = args.pg_admin.rsplit("/", 1)[0] + "/" + name
    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
        pg_version = c.scalar(text("SHOW server_version"))
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="llmos-bench-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
        env.update(LLMOS_ENV="production", LLMOS_DATABASE_URL=db_url, LLMOS_BROKER_URL=args.redis,
                   LLMOS_DATA_DIR=str(tmp / "data"), BENCH_DATABASE_URL=db_url, BENCH_BROKER_URL=args.redis)
        run_llmos(env, "db", "upgrade")
        key = run_llmos(env, "keys", "create", "--owner", "bench").strip()
        engine = create_engine(db_url)
        NaiveBase.metadata.create_all(engine)

        targets = {"llmos": (llmos_server, {"Authorization": f"Bearer {key}"}), "naive": (naive_server, {})}
        ports = {}
        for target, (server, _) in targets.items():
            ports[target] = free_port()
            log = tmp / f"{target}.log"
            procs.append(start(server(ports[target]), env, log))
            wait_healthy(ports[target], procs[-1], log)

        results = {}
        for target, (_, headers) in targets.items():
            drive(ports[target], headers, args.warmup, args.concurrency)
            results[target] = drive(ports[target], headers, args.requests, args.concurrency)

        with engine.connect() as c:
            rows = {"llmos": c.scalar(text("SELECT count(*) FROM jobs")),
                    "naive": c.scalar(text("SELECT count(*) FROM naive_jobs"))}
            unsent = c.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
        engine.dispose()
        messages = {"llmos": queued_messages(r, "generate."), "naive": queued_messages(r, NAIVE_QUEUE)}

        print(f"POST /jobs intake: {args.requests} requests per target after {args.warmup} warm-up, "
              f"{args.concurrency} client threads")
        print(f"gunicorn 2 workers x 16 threads (gthread) per target; Postgres {pg_version}, "
              f"Redis {r.info('server')['redis_version']}; {os.cpu_count()} CPUs shared by client, servers, "
              f"Postgres and Redis ({platform.python_implementation()} {platform.python_version()})")
        print()
        print(f"{'target':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'rows':>8}{'messages':>10}")
        for target, res in results.items():
            print(f"{target:<8}{res.rate:>9.0f}{res.percentile_ms(50):>9.1f}{res.percentile_ms(99):>9.1f}"
                  f"{len(res.errors):>8}{rows[target]:>8}{messages[target]:>10}")
        print()
        print(f"rows and messages count warm-up too (expected {args.requests + args.warmup} each); "
              f"llmos outbox rows left unsent: {unsent}")
        print(f"llmos/naive rate: {results['llmos'].rate / results['naive'].rate:.2f}")
        for target, res in results.items():
            if res.errors:
                print(f"{target}: first error of {len(res.errors)}: {res.errors[0]}")
    finally:
        for proc in procs:
            stop(proc)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        r.flushdb()
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
