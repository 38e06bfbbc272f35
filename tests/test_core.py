"""The lifecycle core: the transition table holds under any interleaving (hypothesis), and nothing but the core
updates the jobs table (a static scan of app/ and workers/; the runtime guard in conftest checks every statement
the in-process tests send)."""

from __future__ import annotations

import ast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select

from app.db import Database
from app.errors import Conflict
from app.jobs import lifecycle
from app.jobs.states import EDGES, TERMINAL, TRANSITIONS, JobStatus, legal
from app.models import Base, Job, JobEvent, Outbox, Owner, WebhookDelivery
from tests.conftest import ROOT

COMPLETION = ("job.succeeded", "job.failed", "job.cancelled")


def test_the_table_is_closed_and_terminal_states_absorb():
    for name, t in TRANSITIONS.items():
        assert t.sources, name
        assert not (t.sources & TERMINAL), f"{name} leaves a terminal state"
    assert all(not s.terminal for s, _ in EDGES)
    assert legal(JobStatus.queued, JobStatus.running) and not legal(JobStatus.succeeded, JobStatus.running)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def core_db(request, tmp_path_factory):
    """The core on both databases it runs on: SQLite (embedded default) and a fresh, migrated PostgreSQL one."""
    from migrations import upgrade
    from tests.conftest import PG_ADMIN, create_pg_database, drop_pg_database

    url = f"sqlite:///{tmp_path_factory.mktemp('core') / 'core.db'}"
    if request.param == "postgresql":
        request.getfixturevalue("pg_server")
        url = create_pg_database(PG_ADMIN)
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        s.add(Owner(id=1, name="o"))
    yield db
    db.dispose()
    if request.param == "postgresql":
        drop_pg_database(PG_ADMIN, url)


class Lifecycle(RuleBasedStateMachine):
    """One job, many actors: workers claiming (duplicate deliveries included) and writing outcomes for attempts
    that may be stale, users cancelling, stopping workers handing back, the scheduler recovering lost workers
    and expiring overdue jobs. After every step the job must be where the table allows."""

    db: Database

    def __init__(self) -> None:
        super().__init__()
        self.job_id = lifecycle.new_id("job")
        with self.db.session() as s:
            lifecycle.submit(s, Job(id=self.job_id, owner_id=1, kind="echo", model=None, input={}, params={},
                                    gpu=["any"], queue="echo.any", priority=5, timeout_s=60, max_attempts=3,
                                    metadata_={}, webhook="https://example.com/hook",
                                    webhook_events=["started", "completed"]))
        self.history: list[str] = ["queued"]
        self.attempts_seen = 0

    def _job(self) -> Job:
        with self.db.session() as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            return job

    def _after(self) -> None:
        job = self._job()
        before = JobStatus(self.history[-1])
        after = JobStatus(job.status)
        assert legal(before, after), f"{before.value} -> {after.value} is not in the table"
        self.history.append(job.status)
        assert job.attempts >= self.attempts_seen, "attempts went down"
        self.attempts_seen = job.attempts

    def _attempt(self, which: int) -> int:
        return max(0, self.attempts_seen - which)  # 0: the current attempt; 1, 2: a stale worker's

    @rule(worker=st.sampled_from(["w1", "w2"]))
    def claim(self, worker: str) -> None:
        with self.db.session() as s:
            lifecycle.claim(s, job_id=self.job_id, worker_id=worker)
        self._after()

    @rule(stale=st.integers(0, 2))
    def succeed(self, stale: int) -> None:
        with self.db.session() as s:
            lifecycle.succeed(s, job_id=self.job_id, attempt=self._attempt(stale), output={"ok": 1}, usage={})
        self._after()

    @rule(stale=st.integers(0, 2), code=st.sampled_from(["internal", "timeout", "cancelled"]))
    def fail(self, stale: int, code: str) -> None:
        with self.db.session() as s:
            lifecycle.fail(s, job_id=self.job_id, attempt=self._attempt(stale), code=code, message=code)
        self._after()

    @rule(stale=st.integers(0, 2))
    def progress(self, stale: int) -> None:
        with self.db.session() as s:
            lifecycle.progress(s, job_id=self.job_id, attempt=self._attempt(stale), done=1, total=2)
        self._after()

    @rule()
    def cancel(self) -> None:
        try:
            with self.db.session() as s:
                lifecycle.cancel(s, owner_id=1, job_id=self.job_id)
        except Conflict:
            assert JobStatus(self._job().status) in TERMINAL - {JobStatus.cancelled}
        self._after()

    @rule(stale=st.integers(0, 2))
    def hand_back(self, stale: int) -> None:
        with self.db.session() as s:
            lifecycle.hand_back(s, job_id=self.job_id, attempt=self._attempt(stale), reason="stopping")
        self._after()

    @rule()
    def worker_lost(self) -> None:
        job = self._job()  # the scheduler's snapshot, possibly stale by the time it acts
        with self.db.session() as s:
            lifecycle.recover_lost(s, job_id=self.job_id, status=job.status, attempt=job.attempts,
                                   max_attempts=job.max_attempts, worker_id=job.worker_id)
        self._after()

    @rule(stale=st.integers(0, 2))
    def expire(self, stale: int) -> None:
        with self.db.session() as s:
            lifecycle.expire(s, job_id=self.job_id, attempt=self._attempt(stale), message="overdue")
        self._after()

    @precondition(lambda self: JobStatus(self.history[-1]) in TERMINAL)
    @rule()
    def terminal_is_final(self) -> None:
        assert JobStatus(self._job().status) in TERMINAL

    @invariant()
    def one_outcome_one_completion_webhook(self) -> None:
        with self.db.session() as s:
            ends = s.scalar(select(func.count()).where(
                JobEvent.job_id == self.job_id, JobEvent.type.in_(["succeeded", "failed", "cancelled"])))
            completions = s.scalar(select(func.count()).where(
                WebhookDelivery.job_id == self.job_id, WebhookDelivery.event_type.in_(COMPLETION)))
            starts = s.scalar(select(func.count()).where(
                WebhookDelivery.job_id == self.job_id, WebhookDelivery.event_type == "job.started"))
            runs = s.scalar(select(func.count()).where(JobEvent.job_id == self.job_id, JobEvent.type == "running"))
            job = s.get(Job, self.job_id)
            assert job is not None
            queued_rows = s.scalar(select(func.count()).where(Outbox.job_id == self.job_id))
        terminal = JobStatus(job.status) in TERMINAL
        assert ends == (1 if terminal else 0), (job.status, ends)
        assert completions == (1 if terminal else 0)
        assert runs == job.attempts == starts, "one running event and one started webhook per attempt"
        # every return to the queue published the job again
        assert queued_rows == 1 + sum(1 for a, b in zip(self.history, self.history[1:], strict=False)
                                      if a != "queued" and b == "queued")
        if job.status == JobStatus.succeeded.value:
            assert job.output == {"ok": 1} and job.error_code is None
        if job.status in (JobStatus.failed.value, JobStatus.cancelled.value):
            assert job.error_code is not None


def test_any_interleaving_keeps_the_invariants(core_db):
    Lifecycle.db = core_db
    run = Lifecycle.TestCase
    run.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])
    run().runTest()


# ---- nothing but the core updates the jobs table -----------------------------------------------------------


def _updates_jobs(tree: ast.AST) -> list[int]:
    """Lines of `update(Job ...)`, `update(Job.__table__)`, raw "UPDATE jobs" text, and `<job>.status = ...`."""
    lines = []
    for node in ast.walk(tree):
        name = getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None
        if name == "update" and node.args:  # type: ignore[attr-defined]
            target = node.args[0]  # type: ignore[attr-defined]
            if (getattr(target, "id", None) or getattr(getattr(target, "value", None), "id", None)) == "Job":
                lines.append(node.lineno)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "update jobs" in node.value.lower():
            lines.append(node.lineno)
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and t.attr in ("status", "attempts") and \
                        "job" in ast.unparse(t.value).lower():
                    lines.append(node.lineno)
    return sorted(lines)


def test_only_the_core_updates_the_jobs_table():
    core = ROOT / "app" / "jobs" / "lifecycle.py"
    offenders = []
    for path in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        if path == core:
            continue
        for line in _updates_jobs(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == [], f"only app/jobs/lifecycle.py may change a job; found: {offenders}"
    assert _updates_jobs(ast.parse(core.read_text())), "the scan finds nothing even in the core: it is broken"


def test_the_scan_catches_a_raw_update():
    bad = "from sqlalchemy import update\nupdate(Job).where(Job.id == 1).values(status='x')\njob.status = 'done'\n"
    assert _updates_jobs(ast.parse(bad)) == [2, 3]
    assert _updates_jobs(ast.parse("s.execute(text('UPDATE jobs SET status = 1'))")) == [1]


def test_the_runtime_guard_sees_a_raw_update_outside_the_core(app):
    """conftest's guard records UPDATE statements on jobs issued from app/ or workers/ outside the core."""
    from sqlalchemy import text

    from tests.conftest import JOBS_UPDATES

    src = "def f(s, text):\n    s.execute(text(\"UPDATE jobs SET status = 'queued' WHERE id = 'nope'\"))\n"
    ns: dict = {}
    exec(compile(src, str(ROOT / "app" / "services" / "fake.py"), "exec"), ns)  # noqa: S102 - a frame in app/
    before = len(JOBS_UPDATES)
    with app.extensions["llmos"].db.session() as s:
        ns["f"](s, text)
    assert JOBS_UPDATES[before:] and "app/services/fake.py" in JOBS_UPDATES[-1]
    del JOBS_UPDATES[before:]  # this one was on purpose


def test_no_naive_datetimes_and_no_status_literals_compared(app):
    """Every datetime the models hand back is timezone-aware, on SQLite too."""
    from app.models import utcnow

    db = Database("sqlite://")
    Base.metadata.create_all(db.engine)
    with db.session() as s:
        s.add(Owner(id=1, name="o", created_at=utcnow()))
    with db.session() as s:
        owner = s.get(Owner, 1)
        assert owner is not None and owner.created_at.tzinfo is not None
    db.dispose()


def test_no_import_cycles():
    """Between any two modules of app/ and workers/, imports go one way only (lazy imports included)."""
    import grimp

    graph = grimp.build_graph("app", "workers", exclude_type_checking_imports=True)
    cycles = sorted({tuple(sorted((m, n))) for m in graph.modules for n in graph.find_modules_directly_imported_by(m)
                     if n in graph.modules and graph.chain_exists(importer=n, imported=m)})
    assert cycles == [], f"import cycles: {cycles}"


def test_the_registry_is_whole_for_concurrent_first_readers():
    """Threads that read the registry for the first time at once all see every kind (it once answered
    'unknown kind' to requests racing its first load)."""
    import threading

    from app.jobs import kinds

    # an empty registry, as in a new process (not importlib.reload: that would make a second JobKind class, and
    # every kind declared with the first would stop being one)
    with kinds._LOAD_LOCK:
        kinds._LOADED.clear()
        kinds._KINDS.clear()
    try:
        seen: list[int] = []
        barrier = threading.Barrier(16)

        def read() -> None:
            barrier.wait()
            seen.append(len(kinds.public_names()))

        threads = [threading.Thread(target=read) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == [len(kinds.public_names())] * 16 and seen[0] >= 6  # built-in kinds, and plugins
    finally:
        kinds.reload()
