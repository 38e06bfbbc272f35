"""Fixtures on real services: the machine's PostgreSQL and Redis, real worker processes.

With LLMOS_REQUIRE_SERVICES=1 (CI sets it) a missing service fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, select, text

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("LLMOS_REQUIRE_SERVICES") == "1"
PG_ADMIN = os.environ.get("LLMOS_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LLMOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
# converted test models, kept between runs outside the checkout (the conversion takes ~40 s; the files ~260 MB)
MODEL_DIR = Path(os.environ.get("LLMOS_TEST_MODEL_DIR", Path(tempfile.gettempdir()) / "llmos-test-models"))


# ---- the jobs table belongs to the lifecycle core ------------------------------------------------------------

JOBS_UPDATES: list[str] = []  # UPDATE statements on jobs sent from app/ or workers/ outside app/jobs/lifecycle.py


@event.listens_for(Engine, "before_cursor_execute")
def _guard_jobs_table(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
    if statement.lstrip()[:11].upper() != "UPDATE JOBS":
        return
    import traceback

    for frame in reversed(traceback.extract_stack()):  # the innermost frame of this repository decides
        f = frame.filename
        if not f.startswith(str(ROOT)) or "/.venv/" in f or f.endswith(("app/db.py", "tests/conftest.py")):
            continue
        if f.endswith("app/jobs/lifecycle.py") or "/tests/" in f:
            return
        JOBS_UPDATES.append(f"{f}:{frame.lineno}")
        return


@pytest.fixture(autouse=True)
def _only_the_core_updates_jobs() -> Iterator[None]:
    before = len(JOBS_UPDATES)
    yield
    bad = JOBS_UPDATES[before:]
    del JOBS_UPDATES[before:]
    assert not bad, f"the jobs table was updated outside app/jobs/lifecycle.py: {bad}"


def unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} unavailable: {exc}"
    if REQUIRE:
        pytest.fail(msg + " (LLMOS_REQUIRE_SERVICES=1)")
    pytest.skip(msg)


# ---- PostgreSQL ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> str:
    try:
        eng = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", exc)
    return PG_ADMIN


def create_pg_database(admin_url: str) -> str:
    name = f"llmos_test_{secrets.token_hex(4)}"
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_server: str) -> Iterator[str]:
    """A database made for this test run, migrated to head."""
    from migrations import upgrade

    url = create_pg_database(pg_server)
    upgrade(url)
    yield url
    drop_pg_database(pg_server, url)


TABLES = ("webhook_attempts", "webhook_deliveries", "webhook_settings", "job_events", "outbox", "jobs", "api_keys",
          "owners", "workers", "models", "checkpoints", "batch_items", "batches", "files", "result_cache")


@pytest.fixture
def pg(pg_url: str) -> str:
    """The run's database, emptied and re-seeded for this test."""
    from app.db import Database
    from app.services import registry

    db = Database(pg_url)
    with db.session() as s:
        s.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        registry.seed_registry(session=s)
    db.dispose()
    return pg_url


# ---- Redis ---------------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        r = redis.Redis.from_url(REDIS_URL)
        r.ping()
        r.flushdb()
        r.close()
    except Exception as exc:  # noqa: BLE001
        unavailable("Redis", exc)
    return REDIS_URL


# ---- the app -------------------------------------------------------------------------------------------


def base_config(tmp_path: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"env": "test", "data_dir": tmp_path / "data", "model_dir": MODEL_DIR,
                           "heartbeat_interval_s": 1.0, "relay_interval_s": 1.0,
                           "rate_limit": "100000/minute"}  # tests of the limits set their own
    cfg.update(over)
    return cfg


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Any]:
    apps = []

    def _make(**over: Any) -> Any:
        from app import create_app

        app = create_app(base_config(tmp_path, **over))
        app.testing = True
        apps.append(app)
        return app

    yield _make
    for app in apps:
        platform = app.extensions["llmos"]
        platform.bus.close()
        platform.db.dispose()


@pytest.fixture
def app(make_app: Callable[..., Any], pg: str, redis_url: str) -> Any:
    return make_app(database_url=pg, broker_url=redis_url)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def make_key(app: Any, owner: str) -> str:
    from app.services import auth

    with app.extensions["llmos"].db.session() as s:
        return auth.create_key(session=s, owner_name=owner)


@pytest.fixture
def key(app: Any) -> str:
    return make_key(app, "alice")


@pytest.fixture
def admin_key(app: Any) -> str:
    from app.services import auth

    with app.extensions["llmos"].db.session() as s:
        return auth.create_key(session=s, owner_name="ops", scopes="admin")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- worker processes ----------------------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, log_path: Path, env: dict[str, str]) -> None:
        self.proc = proc
        self.log_path = log_path
        self.env = env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def worker_env(database_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update({
        "LLMOS_ENV": "test", "LLMOS_DATABASE_URL": database_url, "LLMOS_BROKER_URL": broker_url,
        "LLMOS_DATA_DIR": str(data_dir), "LLMOS_MODEL_DIR": str(MODEL_DIR),
        "LLMOS_HEARTBEAT_INTERVAL_S": "1", "LLMOS_RELAY_INTERVAL_S": "1", "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    env.update(extra)
    return env


@pytest.fixture
def start_scheduler(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`llmos scheduler` as its own process (relay, reconciler, time limits, webhooks)."""
    started: list[WorkerProcess] = []

    def _start(database_url: str, broker_url: str, **extra: str) -> WorkerProcess:
        log_path = tmp_path / f"scheduler-{len(started)}.log"
        env = worker_env(database_url, broker_url, tmp_path / "data", **extra)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "app.cli", "scheduler"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
        sp = WorkerProcess(proc, log_path, env)
        started.append(sp)
        return sp

    yield _start
    for sp in started:
        sp.stop()


@pytest.fixture
def start_worker(tmp_path: Path, start_scheduler: Callable[..., WorkerProcess]
                 ) -> Iterator[Callable[..., WorkerProcess]]:
    """A worker process; the first one of a test also starts a scheduler on the same database and broker
    (scheduler=False to leave it out)."""
    started: list[WorkerProcess] = []
    schedulers: list[WorkerProcess] = []

    def _start(database_url: str, broker_url: str, *args: str, ready_timeout: float = 60, scheduler: bool = True,
               **extra: str):
        from app.db import Database
        from app.models import Worker

        if scheduler and not schedulers:
            schedulers.append(start_scheduler(database_url, broker_url, **extra))
        log_path = tmp_path / f"worker-{len(started)}.log"
        env = worker_env(database_url, broker_url, tmp_path / "data", **extra)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", *args], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ROOT)
        wp = WorkerProcess(proc, log_path, env)
        started.append(wp)
        db = Database(database_url)
        deadline = time.monotonic() + ready_timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"worker exited with {proc.returncode}:\n{wp.log()[-3000:]}")
                with db.session() as s:
                    if s.scalar(select(Worker.id).where(Worker.pid == proc.pid)):
                        return wp
                time.sleep(0.2)
        finally:
            db.dispose()
        pytest.fail(f"worker not ready in {ready_timeout}s:\n{wp.log()[-3000:]}")

    yield _start
    for wp in started:
        wp.stop()


def wait_status(client: Any, key: str, job_id: str, statuses: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}", headers=auth(key)).get_json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {body.get('status')} after {timeout}s: {body}")


# ---- servers a test may kill: its own Redis on a spare port --------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server, so killing or restarting it never touches the machine's shared one."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    import shutil

    if shutil.which("redis-server") is None:
        unavailable("redis-server binary", FileNotFoundError("redis-server"))
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class PgServer:
    """A private PostgreSQL cluster (initdb + pg_ctl as the postgres user) that a test may stop and start."""

    def __init__(self) -> None:
        import glob
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise FileNotFoundError("/usr/lib/postgresql/*/bin")
        self.bin = Path(bins[-1])
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llmos-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            import shutil

            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd="/")

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        import shutil

        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    try:
        server = PgServer()
        server.start()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        unavailable("PostgreSQL binaries (initdb/pg_ctl)", exc)
    yield server
    server.destroy()


# ---- a live HTTP server (for clients that speak HTTP, like the official openai package) ----------------


@pytest.fixture
def live_api(app: Any) -> Iterator[str]:
    """The app served over real HTTP by werkzeug's threaded server, in this process; yields its base URL."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def oai(live_api: str, key: str) -> Any:
    """The official openai client pointed at /v1 with an LLM OS key (no retries: tests see every answer)."""
    import openai

    return openai.OpenAI(base_url=f"{live_api}/v1", api_key=key, max_retries=0, timeout=120)
