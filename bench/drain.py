"""Drain: how fast ONE worker process empties a queue of trivial jobs, beside raw Celery no-op tasks, in one run.

- platform: N `echo` jobs (no model; output = input) submitted through the real path (`llmos api` under gunicorn,
  POST /jobs over HTTP: job + event + outbox rows, message published) while no worker runs; then ONE
  `llmos worker --gpu-type cpu --concurrency 32` starts and drains them (claim, run, store the outcome, wake-up).
- baseline: N raw Celery tasks published to the same Redis; then ONE plain Celery worker (`--pool=threads
  --concurrency 32`, Celery's defaults otherwise) runs them; each task is one Redis INCR.

The two take turns (platform, baseline, platform, ...) for --rounds rounds; medians and the ratio are printed.
Rates are N over the time from the first job claimed (task started) to the last one done, read from the jobs'
own timestamps (the baseline's from Redis); the time from spawning the worker until a 0.1 s poll sees all N
done (process start included) is printed beside it.

Also measured, in the same run:
- database work per job on the worker side: pg_stat_database (transactions, rows) of the run's database around
  each drain (the API is stopped and every connection gone before each reading, so only the worker and the
  bench's own counted polls are in it);
- round trips per job, in-process: the worker's calls (claim, then the outcome) against the same database with
  SQLAlchemy event listeners, and the same for one POST /jobs;
- submit -> result latency with the worker idle: POST one job, GET /jobs/<id>?wait=10 until it ended, --samples
  times in a row, beside the raw Celery round trip (send a task, BLPOP its reply); the two alternate.

A fresh database is created for the run and dropped at the end; Redis db 14 is flushed before, between and after.
No scheduler runs (the fast path needs none).

    python bench/drain.py                                   # 2000 jobs, 3 rounds, 200 latency samples
    python bench/drain.py --jobs 500 --rounds 1 --samples 50
    PYTHONPATH=/path/to/old/checkout python bench/drain.py  # the same against another version of app/ and
                                                            # workers/ (without the echo kind: generate jobs
                                                            # on tiny-random-llama, max_new_tokens=1)
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from intake import (
    RoundTrips,
    Tally,
    app_origin,
    count_submit_round_trips,
    drive,
    free_port,
    llmos_argv,
    llmos_config,
    llmos_server,
    print_round_trips,
    queued_messages,
    run_llmos,
    sql_shape,
    start,
    stop,
    wait_healthy,
)
from sqlalchemy import Connection, Engine, create_engine, text

HERE = Path(__file__).resolve().parent
ECHO = {"kind": "echo", "input": {"text": "Say hello.", "n": 1}, "params": {"sleep_s": 0}}
GENERATE = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "Say hello."},
            "params": {"max_new_tokens": 1, "temperature": 0}}
BASELINE_QUEUE = "drain_baseline"
BASELINE_TASK = "drain.noop"
COUNT, FIRST_START, FIRST_DONE, LAST_DONE = "drain:count", "drain:first_start", "drain:first_done", "drain:last_done"
CONCURRENCY = 32
TERMINAL = ("succeeded", "failed", "cancelled")


# ---- the baseline: raw Celery ----------------------------------------------------------------------------


def baseline_app(broker: str) -> Celery:
    """The plain Celery app: Celery's defaults, one task that counts itself in Redis (or answers a reply key)."""
    app = Celery("drain_baseline", broker=broker)
    app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)
    rds = redis.Redis.from_url(broker)
    started = threading.Event()
    lock = threading.Lock()

    @app.task(name=BASELINE_TASK)
    def noop(total: int, reply: str | None = None) -> None:
        if not started.is_set():
            with lock:
                if not started.is_set():
                    started.set()
                    rds.set(FIRST_START, time.time())
        if reply is not None:
            rds.rpush(reply, 1)
            return
        n = rds.incr(COUNT)
        if n == 1:
            rds.set(FIRST_DONE, time.time())
        if n == total:
            rds.set(LAST_DONE, time.time())

    return app


def baseline_worker(broker: str, concurrency: int) -> None:
    baseline_app(broker).worker_main([
        "worker", "--pool=threads", f"--concurrency={concurrency}", f"--queues={BASELINE_QUEUE}",
        "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        f"--hostname=baseline-{os.getpid()}@%h",
    ])


# ---- the run's context -------------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    name: str
    db_url: str
    admin: Engine
    r: redis.Redis
    env: dict[str, str]
    tmp: Path
    key: str
    body: dict[str, Any]
    celery: Celery
    raced: int = 0  # 422 "unknown kind" answers from the kinds registry race, sent again
    # per latency sample: POST answered, created -> started, started -> finished, finished -> client has it (s)
    parts: list[tuple[float, float, float, float]] = field(default_factory=list)

    def llmos_worker(self, log: Path) -> subprocess.Popen:
        return start(llmos_argv("worker", "--gpu-type", "cpu", "--concurrency", str(CONCURRENCY)), self.env, log)

    def celery_worker(self, log: Path) -> subprocess.Popen:
        argv = [sys.executable, str(HERE / "drain.py"), "--baseline-worker", "--redis", self.args.redis]
        return start(argv, self.env, log)

    def api(self, log: Path) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = start(llmos_server(port), self.env, log)
        wait_healthy(port, proc, log)
        warm_kinds(port, {"Authorization": f"Bearer {self.key}"}, self.body["kind"])
        return proc, port


def warm_kinds(port: int, headers: dict[str, str], kind: str) -> None:
    """Work around a race in app/jobs/kinds.py up to 47350f0, which fixed it (`_loaded` filled the registry
    lazily, unlocked: requests that arrived together while a process loaded it saw only the kinds registered so
    far and got 422 "unknown kind 'echo'; one of: generate"); kept to measure older commits. Invalid bodies of the
    kind (422, no job made) until no "unknown kind" comes back; submissions that still race are sent again."""
    invalid = {"kind": kind, "input": {}, "params": {"no_such_param": 1}}
    for _ in range(20):
        res = drive(port, headers, 64, 16, invalid)
        if not any("unknown kind" in e for e in res.errors):
            return
    sys.exit("the API still answers 'unknown kind' after 20 warm-up passes")


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def backends(ctx: Ctx) -> int:
    with ctx.admin.connect() as c:
        return c.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
                        {"n": ctx.name}) or 0


def quiet(ctx: Ctx, timeout: float = 30) -> None:
    """Until no connection to the run's database is left: a backend flushes its statistics as it exits."""
    deadline = time.monotonic() + timeout
    while backends(ctx) and time.monotonic() < deadline:
        time.sleep(0.05)


STATS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


def db_stats(ctx: Ctx) -> dict[str, int]:
    with ctx.admin.connect() as c:  # from the admin database: these readings are not in the run's counts
        c.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = c.execute(text(f"SELECT {', '.join(STATS)} FROM pg_stat_database WHERE datname = :n"),
                        {"n": ctx.name}).one()
    return dict(zip(STATS, (int(x) for x in row), strict=True))


class Poller:
    """One autocommit connection to the run's database; every statement it runs is one counted transaction."""

    def __init__(self, db_url: str) -> None:
        self.engine = create_engine(db_url, isolation_level="AUTOCOMMIT", pool_size=1)
        self.conn: Connection = self.engine.connect()
        self.statements = 0

    def one(self, sql: str) -> Any:
        self.statements += 1
        return self.conn.execute(text(sql)).one()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), NaN where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class CpuWindow:
    """The worker's CPU per job between the first poll that saw work done and the last: boot excluded."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def seen(self, done: int) -> None:
        if done <= 0:
            return
        point = (cpu_s(self.pid), done)
        if self.start is None:
            self.start = point
        self.end = point

    @property
    def ms_per_job(self) -> float:
        if self.start is None or self.end is None or self.end[1] <= self.start[1]:
            return float("nan")
        return 1000 * (self.end[0] - self.start[0]) / (self.end[1] - self.start[1])


def ts(value: Any) -> float:
    """Seconds since the epoch of a datetime, an ISO 8601 string from the API (`...Z`) or a number."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp() if isinstance(value, datetime) else float(value)


# ---- one drain each ----------------------------------------------------------------------------------------


@dataclass
class Drain:
    n: int
    claim_to_done_s: float  # first claimed (task started) -> last done
    first_to_last_done_s: float  # first done -> last done
    spawn_to_done_s: float  # worker process spawned -> a 0.1 s poll saw all done
    cpu_ms_per_job: float  # the worker process's CPU, boot excluded
    db: dict[str, int] | None = None  # pg_stat_database deltas (platform only, the bench's polls taken out)

    @property
    def rate(self) -> float:
        return self.n / self.claim_to_done_s

    @property
    def steady_rate(self) -> float:
        return (self.n - 1) / self.first_to_last_done_s if self.first_to_last_done_s > 0 else float("nan")

    @property
    def spawn_rate(self) -> float:
        return self.n / self.spawn_to_done_s


def reset(ctx: Ctx) -> None:
    engine = create_engine(ctx.db_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text("TRUNCATE jobs, job_events, outbox CASCADE"))
    engine.dispose()
    ctx.r.flushdb()


def platform_drain(ctx: Ctx, n: int, rnd: int) -> Drain:
    reset(ctx)
    api, port = ctx.api(ctx.tmp / f"api-{rnd}.log")
    accepted = 0
    try:
        for _ in range(10):  # requests refused by the kinds registry race (see warm_kinds) are sent again
            res = drive(port, {"Authorization": f"Bearer {ctx.key}"}, n - accepted, 16, ctx.body)
            accepted += len(res.latencies)
            ctx.raced += sum("unknown kind" in e for e in res.errors)
            if any("unknown kind" not in e for e in res.errors):
                sys.exit(f"submit: {accepted}/{n} accepted; first error: {res.errors[:1]}")
            if accepted == n:
                break
    finally:
        stop(api)
    if accepted != n:
        sys.exit(f"submit: {accepted}/{n} accepted; first error: {res.errors[:1]}")
    queued = queued_messages(ctx.r, f"{ctx.body['kind']}.")
    if queued != n:
        sys.exit(f"submit: {queued} messages in Redis for {n} jobs")
    quiet(ctx)
    before = db_stats(ctx)
    poll = Poller(ctx.db_url)
    log = ctx.tmp / f"worker-{rnd}.log"
    t_spawn = time.time()
    worker = ctx.llmos_worker(log)
    cpu = CpuWindow(worker.pid)
    deadline = time.monotonic() + ctx.args.timeout
    try:
        while True:
            done, bad = poll.one("SELECT count(*) FILTER (WHERE status = 'succeeded'), "
                                 "count(*) FILTER (WHERE status IN ('failed', 'cancelled')) FROM jobs")
            cpu.seen(done)
            if done + bad >= n:
                t_seen = time.time()
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"worker: {done}/{n} succeeded, {bad} failed; exit {worker.poll()}\n{tail(log)}")
            time.sleep(0.1)
        if bad:
            err = poll.one("SELECT error_code || ': ' || error_message FROM jobs WHERE error_code IS NOT NULL LIMIT 1")
            sys.exit(f"worker: {bad} of {n} jobs failed, e.g. {err[0]}\n{tail(log)}")
        first_start, first_done, last_done = poll.one(
            "SELECT min(started_at), min(finished_at), max(finished_at) FROM jobs")
    finally:
        stop(worker)
        poll.close()
    quiet(ctx)
    after = db_stats(ctx)
    delta = {k: after[k] - before[k] for k in STATS}
    delta["xact_commit"] -= poll.statements  # the bench's own autocommit polls
    return Drain(n, ts(last_done) - ts(first_start), ts(last_done) - ts(first_done), t_seen - t_spawn,
                 cpu.ms_per_job, delta)


def baseline_drain(ctx: Ctx, n: int, rnd: int) -> Drain:
    ctx.r.flushdb()
    with ctx.celery.producer_or_acquire() as producer:
        for _ in range(n):
            ctx.celery.send_task(BASELINE_TASK, args=[n], queue=BASELINE_QUEUE, producer=producer)
    if (queued := queued_messages(ctx.r, BASELINE_QUEUE)) != n:
        sys.exit(f"baseline: {queued} messages in Redis for {n} tasks")
    log = ctx.tmp / f"celery-{rnd}.log"
    t_spawn = time.time()
    worker = ctx.celery_worker(log)
    cpu = CpuWindow(worker.pid)
    deadline = time.monotonic() + ctx.args.timeout
    try:
        while (done := int(ctx.r.get(COUNT) or 0)) < n:
            cpu.seen(done)
            if worker.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"baseline worker: {int(ctx.r.get(COUNT) or 0)}/{n} done; exit {worker.poll()}\n{tail(log)}")
            time.sleep(0.1)
        t_seen = time.time()
        cpu.seen(done)
        first_start, first_done, last_done = (float(ctx.r.get(k) or 0) for k in (FIRST_START, FIRST_DONE, LAST_DONE))
    finally:
        stop(worker)
    return Drain(n, last_done - first_start, last_done - first_done, t_seen - t_spawn, cpu.ms_per_job)


# ---- round trips per job, in-process -------------------------------------------------------------------------


def worker_round_trips(ctx: Ctx, jobs: int) -> tuple[Tally, Tally, list[str], list[str], str]:
    """Submit jobs+1 jobs in-process (no worker runs), then make the worker's database calls for each: the claim
    and the success, exactly as workers/tasks.py run_job does. Returns (claim, outcome) totals, the statements of
    one claim and one outcome, and what was called."""
    from app import create_app

    app = create_app(llmos_config(ctx.db_url, ctx.args.redis, ctx.tmp / "data"))
    db = app.extensions["llmos"].db
    client = app.test_client()
    ids = []
    for _ in range(jobs + 1):
        res = client.post("/jobs", json=ctx.body, headers={"Authorization": f"Bearer {ctx.key}"})
        assert res.status_code == 202, res.get_data(as_text=True)
        ids.append(res.get_json()["id"])
    time.sleep(0.5)
    worker_id = f"llmos-cpu-{os.getpid()}@bench"
    if has_core():
        from app.jobs import lifecycle

        how = "lifecycle.claim in Database.run, then lifecycle.succeed in Database.session (workers/tasks.py)"

        def claim(job_id: str) -> Any:
            return db.run(lambda s: lifecycle.claim(s, job_id=job_id, worker_id=worker_id))

        def outcome(job_id: str, c: Any) -> None:
            with db.session() as s:
                assert lifecycle.succeed(s, job_id=job_id, attempt=c.attempt, output=c.input,
                                         usage={"seconds": 0.0, "slept_s": 0.0})
    else:  # before app/jobs: workers/tasks.py _claim (claim_job + spec_for in one session) and complete_job
        from app.models import ModelEntry
        from app.services import jobs as old_jobs

        how = ("jobs.claim_job + the model's registry row (spec_for) in one session, then jobs.complete_job "
               "(workers/tasks.py before the refactor)")

        def claim(job_id: str) -> Any:
            with db.session() as s:
                job = old_jobs.claim_job(session=s, job_id=job_id, worker_id=worker_id)
                assert job is not None
                if job.model is not None:
                    s.get(ModelEntry, job.model)  # workers.model_cache.spec_for, without importing torch
                return job.attempts

        def outcome(job_id: str, attempt: Any) -> None:
            with db.session() as s:
                assert old_jobs.complete_job(session=s, job_id=job_id, attempt=attempt,
                                             output={"text": "x", "finish_reason": "length"},
                                             usage={"prompt_tokens": 3, "completion_tokens": 1})

    counter = RoundTrips()  # every engine of this process: the app may keep more than one pool
    try:
        outcome(ids[0], claim(ids[0]))  # warm-up
        claim_tally, outcome_tally = Tally(), Tally()
        one_claim: list[str] = []
        one_outcome: list[str] = []
        for job_id in ids[1:]:
            counter.reset()
            counter.on = True
            c = claim(job_id)
            counter.on = False
            t = counter.total()
            claim_tally = claim_tally + t
            one_claim = one_claim or t.sql
            counter.reset()
            counter.on = True
            outcome(job_id, c)
            counter.on = False
            t = counter.total()
            outcome_tally = outcome_tally + t
            one_outcome = one_outcome or t.sql
    finally:
        counter.close()
        db.dispose()
    ctx.r.flushdb()
    return claim_tally, outcome_tally, one_claim, one_outcome, how


def shapes(sql: list[str]) -> str:
    return ", ".join(f"{n} x {s}" if n > 1 else s for s, n in Counter(sql_shape(x) for x in sql).items())


# ---- latency -----------------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def latency(ctx: Ctx, samples: int, warmup: int = 10) -> tuple[list[float], list[float]]:
    ctx.r.flushdb()
    api, port = ctx.api(ctx.tmp / "api-latency.log")
    worker = ctx.llmos_worker(ctx.tmp / "worker-latency.log")
    celery_worker = ctx.celery_worker(ctx.tmp / "celery-latency.log")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {ctx.key}", "Content-Type": "application/json"}
    payload = json.dumps(ctx.body).encode()

    def request(method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status not in (200, 202):
            sys.exit(f"{method} {path}: {resp.status} {data[:300]!r}")
        return json.loads(data)  # type: ignore[no-any-return]

    def platform_once(wait: int = 10) -> float:
        t0 = time.perf_counter()
        job = request("POST", "/jobs", payload)
        posted = time.perf_counter()
        while job["status"] not in TERMINAL:
            job = request("GET", f"/jobs/{job['id']}?wait={wait}")
        elapsed, now = time.perf_counter() - t0, time.time()
        ctx.parts.append((posted - t0, ts(job["started_at"]) - ts(job["created_at"]),
                          ts(job["finished_at"]) - ts(job["started_at"]), now - ts(job["finished_at"])))
        if job["status"] != "succeeded" or (ctx.body["kind"] == "echo" and job["output"] != ctx.body["input"]):
            sys.exit(f"latency job ended {job['status']}: {json.dumps(job)[:500]}")
        return elapsed

    def baseline_once() -> float:
        reply = f"drain:reply:{secrets.token_hex(8)}"
        t0 = time.perf_counter()
        ctx.celery.send_task(BASELINE_TASK, args=[0, reply], queue=BASELINE_QUEUE)
        if ctx.r.blpop([reply], timeout=30) is None:
            sys.exit(f"baseline round trip: no reply in 30 s\n{tail(ctx.tmp / 'celery-latency.log')}")
        return time.perf_counter() - t0

    try:
        for _ in range(warmup):  # the first ones wait for both workers to start
            platform_once(wait=60)
            baseline_once()
        ctx.parts.clear()
        plat: list[float] = []
        base: list[float] = []
        for i in range(samples):
            if i % 2:
                plat.append(platform_once())
                base.append(baseline_once())
            else:
                base.append(baseline_once())
                plat.append(platform_once())
        return plat, base
    finally:
        conn.close()
        for proc in (api, worker, celery_worker):
            stop(proc)


# ---- main --------------------------------------------------------------------------------------------------


def has_core() -> bool:
    """The lifecycle core (app/jobs) and the echo kind exist in the imported app/ (not before the refactor).
    Looked up on disk: importlib would find app.jobs of the editable install even where PYTHONPATH's app/ has
    none (setuptools' editable finder answers for submodules the path finder did not find)."""
    import app

    return (Path(app.__file__).parent / "jobs" / "lifecycle.py").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs (tasks) per drain (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="drains of each, taking turns (default 3)")
    parser.add_argument("--samples", type=int, default=200, help="sequential latency samples (default 200)")
    parser.add_argument("--counted", type=int, default=50, help="jobs whose round trips are counted (default 50)")
    parser.add_argument("--kind", choices=("echo", "generate"), default=None,
                        help="job kind (default echo; generate on tiny-random-llama, max_new_tokens=1, where the "
                             "app has no echo kind)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one drain may take (default 900)")
    parser.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="a Postgres URL allowed to CREATE DATABASE")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="Redis URL; its db is flushed")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker(args.redis, CONCURRENCY)
        return
    kind = args.kind or ("echo" if has_core() else "generate")
    if kind == "echo" and not has_core():
        sys.exit("this app/ has no echo kind; use --kind generate")
    body = ECHO if kind == "echo" else GENERATE

    name = f"llmos_drain_{secrets.token_hex(4)}"
    admin = create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
    db_url = args.pg_admin.rsplit("/", 1)[0] + "/" + name
    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
        pg_version = c.scalar(text("SHOW server_version"))
    tmp = Path(tempfile.mkdtemp(prefix="llmos-drain-"))
    celery = baseline_app(args.redis)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
        env.update(LLMOS_ENV="production", LLMOS_SECRET_KEY=base64.b64encode(os.urandom(32)).decode(),
                   LLMOS_DATABASE_URL=db_url, LLMOS_BROKER_URL=args.redis,
                   LLMOS_DATA_DIR=str(tmp / "data"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        run_llmos(env, "db", "upgrade")
        key = run_llmos(env, "keys", "create", "--owner", "bench", "--rate-limit", "1000000/minute").strip()
        ctx = Ctx(args, name, db_url, admin, r, env, tmp, key, body, celery)

        print(f"Drain: {args.jobs} {kind} jobs, one worker process ({CONCURRENCY} threads), {args.rounds} round(s) "
              f"taking turns with raw Celery; app from {app_origin()}", flush=True)
        plat: list[Drain] = []
        base: list[Drain] = []
        for rnd in range(args.rounds):
            plat.append(platform_drain(ctx, args.jobs, rnd))
            base.append(baseline_drain(ctx, args.jobs, rnd))
            print(f"  round {rnd + 1}: platform {plat[-1].rate:.0f} jobs/s, raw Celery {base[-1].rate:.0f} tasks/s",
                  flush=True)

        counted = worker_round_trips(ctx, args.counted)
        own, background, inproc_rate, one = count_submit_round_trips(
            db_url=db_url, broker_url=args.redis, data_dir=tmp / "data", key=key, body=body, posts=args.counted)
        ctx.r.flushdb()
        lat_plat, lat_base = latency(ctx, args.samples)

        report(ctx, kind, pg_version, plat, base, counted, (own, background, inproc_rate, one), lat_plat, lat_base)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        r.flushdb()
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)


def report(ctx: Ctx, kind: str, pg_version: str, plat: list[Drain], base: list[Drain],
           counted: tuple[Tally, Tally, list[str], list[str], str], submit: tuple[Tally, Tally, float, list[str]],
           lat_plat: list[float], lat_base: list[float]) -> None:
    args = ctx.args
    med = statistics.median
    print()
    print(f"Postgres {pg_version}, Redis {ctx.r.info('server')['redis_version']}, {os.cpu_count()} CPUs shared by "
          f"the bench, the worker, Postgres and Redis; Python {sys.version.split()[0]}")
    if kind == "generate":
        why = "--kind generate" if has_core() else "this app/ has no echo kind"
        print(f"NOTE: generate jobs on tiny-random-llama with max_new_tokens=1 ({why}): the platform's figures "
              "include a model forward pass per batch, and the model's load in each worker")
    print()
    print(f"{'':<22}{'claim->done':>13}{'first->last done':>18}{'spawn->done':>13}{'worker CPU ms/job':>19}"
          "   jobs/s (claim->done) per round")
    for label, runs in (("platform jobs/s", plat), ("raw Celery tasks/s", base)):
        print(f"{label:<22}{med(d.rate for d in runs):>13.0f}{med(d.steady_rate for d in runs):>18.0f}"
              f"{med(d.spawn_rate for d in runs):>13.0f}{med(d.cpu_ms_per_job for d in runs):>19.2f}   "
              + " ".join(f"{d.rate:.0f}" for d in runs))
    ratio = [p.rate / b.rate for p, b in zip(plat, base, strict=True)]
    print(f"{'platform/raw Celery':<22}{med(d.rate for d in plat) / med(d.rate for d in base):>13.2f}"
          f"{med(d.steady_rate for d in plat) / med(d.steady_rate for d in base):>18.2f}"
          f"{med(d.spawn_rate for d in plat) / med(d.spawn_rate for d in base):>13.2f}"
          f"{med(d.cpu_ms_per_job for d in plat) / med(d.cpu_ms_per_job for d in base):>19.2f}   "
          "per round: " + " ".join(f"{x:.2f}" for x in ratio))
    if ctx.raced:
        print(f"NOTE: {ctx.raced} POST /jobs answered 422 \"unknown kind\" (the kinds registry race, app/jobs/kinds.py "
              "_loaded) and were sent again")
    print(f"(medians of {args.rounds} round(s) of {args.jobs}; claim->done: first job claimed (task started) to the "
          f"last done; spawn->done: from spawning the worker process, boot included, to a 0.1 s poll seeing all; "
          f"worker CPU: user+system of the worker process between the first and the last poll that saw jobs done)")
    print()
    per = {k: med(d.db[k] for d in plat if d.db) / args.jobs for k in STATS}
    print(f"Worker side, pg_stat_database per job (median of rounds; worker start, heartbeats and stop included): "
          f"{per['xact_commit']:.2f} commits, {per['xact_rollback']:.2f} rollbacks, "
          f"{per['tup_inserted']:.2f} rows inserted, {per['tup_updated']:.2f} rows updated")
    claim, outcome, one_claim, one_outcome, how = counted
    n = args.counted
    total = claim + outcome
    print(f"Worker side, in-process ({how}), per job over {n} {kind} jobs:")
    for label, t, sql in (("claim", claim, one_claim), ("outcome", outcome, one_outcome)):
        print(f"  {label:<8} {t.statements / n:.2f} statements + {t.begins / n:.2f} BEGIN + {t.commits / n:.2f} COMMIT"
              f" + {t.pings / n:.2f} pre-ping = {t.round_trips / n:.2f} round trips: {shapes(sql)}")
    print(f"  round trips per job (claim + outcome): {total.round_trips / n:.2f} "
          f"({total.statements / n:.2f} statements; {total.commits / n:.2f} transactions committed, "
          f"{total.pings / n:.2f} pre-pings)")
    own, background, rate, one = submit
    print(f"Submit side, per POST /jobs (in-process, {n} sequential POSTs at {rate:.0f}/s):")
    print_round_trips("  POST", own, background, n, one)
    print()
    print(f"Submit -> result latency, worker idle, {args.samples} sequential samples (alternating):")
    print(f"  platform: POST /jobs + GET /jobs/<id>?wait=10   p50 {1000 * percentile(lat_plat, 50):6.1f} ms   "
          f"p99 {1000 * percentile(lat_plat, 99):6.1f} ms")
    print(f"  raw Celery: send_task + BLPOP of its reply       p50 {1000 * percentile(lat_base, 50):6.1f} ms   "
          f"p99 {1000 * percentile(lat_base, 99):6.1f} ms")
    print(f"  platform/raw Celery p50: {percentile(lat_plat, 50) / percentile(lat_base, 50):.1f}x")
    if ctx.parts:
        names = ("POST answered", "created -> started (publish, delivery, claim)",
                 "started -> finished (run, outcome)", "finished -> client has it (wake-up, GET answer)")
        print("  where the platform's time goes (p50 of each part, ms; job timestamps, one clock): " + "; ".join(
            f"{n} {1000 * percentile([p[i] for p in ctx.parts], 50):.1f}" for i, n in enumerate(names)))


if __name__ == "__main__":
    main()
