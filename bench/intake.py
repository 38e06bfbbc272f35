"""POST /jobs intake: requests/s and latency of the LLM OS API beside a naive Flask endpoint, in one run.

Both targets run under gunicorn with the same settings (2 worker processes, gthread, 16 threads each, access log
to a file) against the same Postgres and Redis:

- llmos: `llmos api --workers 2`. Per request: authenticate the key, validate, write job + event + outbox row
  in one transaction, publish to Redis after commit, mark the outbox row sent.
- naive: the first version people write (`naive_app` below): insert one row with SQLAlchemy, then Celery
  `send_task` to Redis. No auth, no validation, no outbox.

The bench makes its own database (dropped at the end), runs `llmos db upgrade` and `llmos keys create` against
it, and uses Redis db 13 (flushed before and after). No worker runs: the jobs stay queued. The targets take
turns (llmos, naive, llmos, naive, ...) for --rounds rounds, so a noisy machine hits both alike; medians are
printed.

It then counts the database round trips of one POST /jobs in the common case, in-process: the same app on a
Flask test client (same database, Redis and key), SQLAlchemy events on every engine of the process, after a
warm-up request (the caches are warm): statements, BEGINs (psycopg 3 sends one before a transaction's first
statement, a round trip of its own) and COMMITs, on the request's thread and on background threads (the outbox
marking).

    python bench/intake.py                       # 3 rounds of 2000 requests per target, 16 client threads
    python bench/intake.py --requests 5000 --concurrency 32 --rounds 5
    PYTHONPATH=/path/to/other/checkout python bench/intake.py   # the same bench against another version
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from flask import Flask, request
from sqlalchemy import JSON, Engine, String, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import Pool

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


def start(argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def app_root() -> Path:
    """The checkout `app` is imported from here (this one, or another on PYTHONPATH)."""
    import app

    return Path(app.__file__).resolve().parents[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def deployment(pg_admin: str, redis_url: str) -> Iterator[tuple[dict[str, str], Path, str]]:
    """A fresh database (dropped on the way out) and a flushed Redis db, migrated, with one bench key (no rate limit
    to speak of): yields the environment for llmos commands, a temporary directory and the key. Stop the
    processes started inside before leaving."""
    name = f"llmos_bench_{secrets.token_hex(4)}"
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    db_url = pg_admin.rsplit("/", 1)[0] + "/" + name
    redis.Redis.from_url(redis_url).flushdb()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    tmp = Path(tempfile.mkdtemp(prefix="llmos-bench-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
        env.update(LLMOS_ENV="production", LLMOS_SECRET_KEY=base64.b64encode(os.urandom(32)).decode(),
                   LLMOS_DATABASE_URL=db_url, LLMOS_BROKER_URL=redis_url, LLMOS_DATA_DIR=str(tmp / "data"))
        run_llmos(env, "db", "upgrade")
        key = run_llmos(env, "keys", "create", "--owner", "bench", "--rate-limit", "1000000/minute").strip()
        yield env, tmp, key
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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


def drive(port: int, headers: dict[str, str], requests: int, concurrency: int,
          body: dict[str, Any] | None = None) -> Result:
    """POST `body` (default BODY) to /jobs `requests` times from `concurrency` threads, each on its own
    keep-alive connection."""
    payload = json.dumps(BODY if body is None else body).encode()
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


# ---- where the CPU goes ----------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, user + system CPU seconds) of a process, from /proc (Linux)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
    return name, int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def cpu_by_group(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by: the target's server (its process tree), PostgreSQL, Redis, this client, and the
    whole machine (busy time of all CPUs, from /proc/stat). Differences between two snapshots say where a round's
    CPU went. Empty where /proc is missing."""
    if not Path("/proc/stat").exists():
        return {}
    stats = {pid: st for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()) if (st := _stat(pid))}
    tree, grew = {server_pid}, True
    while grew:
        more = {pid for pid, (_, ppid, _) in stats.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = (sum(int(x) for x in cpu[:8]) - int(cpu[3]) - int(cpu[4])) / CLK_TCK  # all but idle and iowait
    times = os.times()
    return {"server": sum(stats[p][2] for p in tree if p in stats),
            "postgres": sum(c for n, _, c in stats.values() if n == "postgres"),
            "redis": sum(c for n, _, c in stats.values() if n.startswith("redis-server")),
            "client": times.user + times.system, "machine": busy}


# ---- database round trips, counted in-process ------------------------------------------------------------


@dataclass
class Tally:
    statements: int = 0
    begins: int = 0
    commits: int = 0
    rollbacks: int = 0
    pings: int = 0  # pool pre-ping on checkout: an empty statement, a round trip (and a transaction) of its own
    sql: list[str] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        return self.begins + self.statements + self.commits + self.rollbacks + self.pings

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.statements + other.statements, self.begins + other.begins, self.commits + other.commits,
                     self.rollbacks + other.rollbacks, self.pings + other.pings, self.sql + other.sql)


class RoundTrips:
    """What SQLAlchemy sends to the database, per thread name: statements (`before_cursor_execute`), BEGINs
    (psycopg 3 sends `BEGIN` as a round trip of its own before the first statement of a transaction, none on an
    autocommit connection), COMMITs and ROLLBACKs that reach the server (psycopg skips them on an idle
    connection) and the pool's pre-ping of a reused connection at checkout (where the engine has pool_pre_ping).
    Counts only while `on`. It listens on every engine and pool of the process (the app may keep more than one
    pool, e.g. an autocommit one); statements sent on a raw driver connection (COPY) are not seen."""

    def __init__(self) -> None:
        self.on = False
        self.threads: dict[str, Tally] = {}
        self._lock = threading.Lock()
        self._listeners = [(Engine, "before_cursor_execute", self._statement), (Engine, "commit", self._commit),
                           (Engine, "rollback", self._rollback), (Pool, "connect", self._connect),
                           (Pool, "checkout", self._checkout)]
        for target, name, fn in self._listeners:
            event.listen(target, name, fn)

    def close(self) -> None:
        for target, name, fn in self._listeners:
            event.remove(target, name, fn)

    @staticmethod
    def _connect(dbapi_conn: Any, record: Any) -> None:
        record.info["bench.fresh"] = True  # the pool does not ping a connection it has just made

    def _checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        fresh = record.info.pop("bench.fresh", False)
        if self.on and not fresh and getattr(getattr(proxy, "_pool", None), "_pre_ping", False):
            self._tally().pings += 1

    def reset(self) -> None:
        with self._lock:
            self.threads = {}

    def _tally(self) -> Tally:
        name = threading.current_thread().name
        with self._lock:
            return self.threads.setdefault(name, Tally())

    @staticmethod
    def _in_transaction(dbapi_conn: Any) -> bool:
        info = getattr(dbapi_conn, "info", None)  # psycopg 3; other drivers: assume a transaction is open
        status = getattr(info, "transaction_status", None)
        return status is None or int(status) != 0  # 0: IDLE

    def _statement(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                   executemany: bool) -> None:
        if not self.on:
            return
        t = self._tally()
        dbapi_conn = getattr(cursor, "connection", None)
        if dbapi_conn is not None and not getattr(dbapi_conn, "autocommit", False) \
                and not self._in_transaction(dbapi_conn):
            t.begins += 1
        t.statements += 1
        t.sql.append(" ".join(statement.split()))

    def _commit(self, conn: Any) -> None:
        if self.on and self._in_transaction(conn.connection.dbapi_connection):
            self._tally().commits += 1

    def _rollback(self, conn: Any) -> None:
        if self.on and self._in_transaction(conn.connection.dbapi_connection):
            self._tally().rollbacks += 1

    def total(self, *, threads: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Tally:
        out = Tally()
        with self._lock:
            items = list(self.threads.items())
        for name, t in items:
            if (threads and name not in threads) or name in exclude:
                continue
            out = out + t
        return out


def sql_shape(statement: str) -> str:
    """`INSERT INTO jobs ...` -> `INSERT jobs`, for a short summary of what a request sends."""
    words = statement.replace('"', "").split()
    if not words:
        return "?"
    upper = [w.upper() for w in words]
    if upper[0] == "WITH":  # data-modifying CTEs: every table written
        written = [f"{'INSERT' if w == 'INTO' else w} {words[i + 1].split('(')[0]}"
                   for i, w in enumerate(upper[:-1]) if w in ("INTO", "UPDATE")]
        return f"WITH ({', '.join(written)})" if written else "WITH"
    for marker in ("INTO", "UPDATE", "FROM"):
        if marker in upper and upper.index(marker) + 1 < len(words):
            return f"{upper[0]} {words[upper.index(marker) + 1].split('(')[0]}"
    return upper[0]


def llmos_config(db_url: str, broker_url: str, data_dir: Path) -> dict[str, Any]:
    return {"env": "production", "database_url": db_url, "broker_url": broker_url, "data_dir": str(data_dir),
            "secret_key": base64.b64encode(os.urandom(32)).decode(), "rate_limit": "1000000/minute",
            "max_queued_jobs": 10_000_000}  # no worker runs: every job of every round stays queued


def count_submit_round_trips(*, db_url: str, broker_url: str, data_dir: Path, key: str, body: dict[str, Any],
                             posts: int = 50) -> tuple[Tally, Tally, float, list[str]]:
    """POST body `posts` times through a Flask test client after one warm-up request.
    Returns (the request's thread, background threads, POSTs per second, the statements of one POST)."""
    from app import create_app

    app = create_app(llmos_config(db_url, broker_url, data_dir))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    counter = RoundTrips()  # every engine of this process: the app's pools (the bench's own are idle meanwhile)
    request = (threading.current_thread().name,)
    try:
        for _ in range(2):  # warm-up: connections, caches (key, model, webhook, gpu types), prepared plans
            res = client.post("/jobs", json=body, headers=headers)
            if res.status_code != 202:
                sys.exit(f"in-process POST /jobs answered {res.status_code}: {res.get_data(as_text=True)[:500]}")
        time.sleep(0.5)  # let a background outbox flush of the warm-up pass
        counter.on = True
        res = client.post("/jobs", json=body, headers=headers)
        one = list(counter.total(threads=request).sql)
        counter.reset()
        t0 = time.perf_counter()
        for _ in range(posts):
            res = client.post("/jobs", json=body, headers=headers)
            assert res.status_code == 202, res.get_data(as_text=True)
        rate = posts / (time.perf_counter() - t0)
        time.sleep(1.0)  # background marking of the outbox rows (every 0.2 s) lands inside the window
        counter.on = False
        return counter.total(threads=request), counter.total(exclude=request), rate, one
    finally:
        counter.close()
        app.extensions["llmos"].db.dispose()


def print_round_trips(label: str, own: Tally, background: Tally, per: int, one: list[str]) -> None:
    print(f"{label}: on the request's thread, per POST: {own.statements / per:.2f} statements, "
          f"{own.begins / per:.2f} BEGIN, {own.commits / per:.2f} COMMIT, {own.rollbacks / per:.2f} ROLLBACK, "
          f"{own.pings / per:.2f} pre-ping = {own.round_trips / per:.2f} round trips")
    print(f"{' ' * len(label)}  background threads (outbox marking, amortised over {per} sequential POSTs): "
          f"{background.statements / per:.3f} statements, {background.round_trips / per:.3f} round trips per POST")
    shapes = Counter(sql_shape(s) for s in one)
    print(f"{' ' * len(label)}  one POST sends: " + ", ".join(f"{n} x {s}" if n > 1 else s for s, n in shapes.items()))


# ---- the run -------------------------------------------------------------------------------------------


def app_origin() -> str:
    """Where `app` is imported from (this checkout, or another one on PYTHONPATH), with its git commit."""
    root = app_root()
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "app", "workers"],
                           capture_output=True, text=True).stdout.strip()
    return f"{root} @ {done.stdout.strip() or '?'}{' (+ uncommitted changes)' if dirty else ''}"


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
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per target, taking turns (default 3)")
    parser.add_argument("--posts", type=int, default=50, help="POSTs counted for the round trips (default 50)")
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
        env.update(LLMOS_ENV="production", LLMOS_SECRET_KEY=base64.b64encode(os.urandom(32)).decode(),
                   LLMOS_DATABASE_URL=db_url, LLMOS_BROKER_URL=args.redis,
                   LLMOS_DATA_DIR=str(tmp / "data"), BENCH_DATABASE_URL=db_url, BENCH_BROKER_URL=args.redis,
                   LLMOS_MAX_QUEUED_JOBS="10000000")  # no worker runs: every job of every round stays queued
        run_llmos(env, "db", "upgrade")
        key = run_llmos(env, "keys", "create", "--owner", "bench", "--rate-limit", "1000000/minute").strip()
        engine = create_engine(db_url)
        NaiveBase.metadata.create_all(engine)

        targets = {"llmos": (llmos_server, {"Authorization": f"Bearer {key}"}), "naive": (naive_server, {})}
        ports, servers = {}, {}
        for target, (server, _) in targets.items():
            ports[target] = free_port()
            log = tmp / f"{target}.log"
            # `llmos api` execs `python -m gunicorn`, which puts its working directory first on sys.path: run it
            # in the checkout under test, or it serves this directory's app whatever PYTHONPATH says
            procs.append(start(server(ports[target]), env, log, cwd=app_root() if target == "llmos" else None))
            servers[target] = procs[-1].pid
            wait_healthy(ports[target], procs[-1], log)

        for target, (_, headers) in targets.items():
            drive(ports[target], headers, args.warmup, args.concurrency)
        runs: dict[str, list[Result]] = {target: [] for target in targets}
        cpu: dict[str, Counter[str]] = {target: Counter() for target in targets}
        for _ in range(args.rounds):  # take turns, so that a noisy machine hits both targets alike
            for target, (_, headers) in targets.items():
                before = cpu_by_group(servers[target])
                runs[target].append(drive(ports[target], headers, args.requests, args.concurrency))
                after = cpu_by_group(servers[target])
                cpu[target].update({k: after[k] - before[k] for k in after})
        results = {t: Result([x for r_ in rs for x in r_.latencies], [e for r_ in rs for e in r_.errors],
                             sum(r_.seconds for r_ in rs)) for t, rs in runs.items()}
        rates = {t: statistics.median(r_.rate for r_ in rs) for t, rs in runs.items()}

        with engine.connect() as c:
            rows = {"llmos": c.scalar(text("SELECT count(*) FROM jobs")),
                    "naive": c.scalar(text("SELECT count(*) FROM naive_jobs"))}
            unsent = c.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
        engine.dispose()
        messages = {"llmos": queued_messages(r, "generate."), "naive": queued_messages(r, NAIVE_QUEUE)}

        own, background, inproc_rate, one = count_submit_round_trips(
            db_url=db_url, broker_url=args.redis, data_dir=tmp / "data", key=key, body=BODY, posts=args.posts)

        print(f"POST /jobs intake: {args.rounds} round(s) of {args.requests} requests per target (taking turns) "
              f"after {args.warmup} warm-up, {args.concurrency} client threads")
        print(f"gunicorn 2 workers x 16 threads (gthread) per target; Postgres {pg_version}, "
              f"Redis {r.info('server')['redis_version']}; {os.cpu_count()} CPUs shared by client, servers, "
              f"Postgres and Redis ({platform.python_implementation()} {platform.python_version()}); "
              f"app from {app_origin()}")
        print()
        print(f"{'target':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'rows':>8}{'messages':>10}"
              f"   req/s per round")
        for target, res in results.items():
            print(f"{target:<8}{rates[target]:>9.0f}{res.percentile_ms(50):>9.1f}{res.percentile_ms(99):>9.1f}"
                  f"{len(res.errors):>8}{rows[target]:>8}{messages[target]:>10}   "
                  + " ".join(f"{r_.rate:.0f}" for r_ in runs[target]))
        print()
        print(f"req/s: median of the rounds; p50/p99: all rounds' requests. Rows and messages count warm-up too "
              f"(expected {args.rounds * args.requests + args.warmup} each); llmos outbox rows left unsent: {unsent}")
        ratios = [a.rate / b.rate for a, b in zip(runs["llmos"], runs["naive"], strict=True)]
        print(f"llmos/naive rate: {rates['llmos'] / rates['naive']:.2f} (medians); per round: "
              + " ".join(f"{x:.2f}" for x in ratios))
        if all(cpu.values()):
            done = args.rounds * args.requests
            print()
            print("CPU ms per request (all rounds), by process: " + ", ".join(
                f"{target}: " + " ".join(f"{k} {1000 * v / done:.2f}" for k, v in cpu[target].items())
                for target in targets))
            print("(server: the target's gunicorn tree; machine: busy time of all CPUs, "
                  f"{os.cpu_count()} x the wall time at most)")
        for target, res in results.items():
            if res.errors:
                print(f"{target}: first error of {len(res.errors)}: {res.errors[0]}")
        print()
        print(f"Database round trips per POST /jobs (in-process, Flask test client, warm caches, {BODY['kind']} "
              f"job; {args.posts} sequential POSTs at {inproc_rate:.0f}/s):")
        print_round_trips("llmos", own, background, args.posts, one)
        print("naive   : 1 BEGIN + 1 INSERT + 1 COMMIT = 3 round trips (by construction)")
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
