"""Group commit of new jobs (app.jobs.intake) on PostgreSQL: concurrent submits share statements, every job gets
its row, its `queued` event and its outbox row, one bad job fails alone, and a lone submit writes on its own
thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.db import Database
from app.jobs import lifecycle
from app.jobs.intake import Intake
from app.jobs.states import JobStatus
from app.models import Job, JobEvent, Outbox, Owner


@pytest.fixture
def db(pg: str) -> Iterator[Database]:
    db = Database(pg)
    with db.session() as s:
        s.add(Owner(id=1, name="o"))
    yield db
    db.dispose()


def new_job(i: int, owner_id: int = 1) -> Job:
    return Job(id=lifecycle.new_id("job"), owner_id=owner_id, kind="echo", model=None, input={"i": i}, params={},
               gpu=["any"], queue="echo.any", priority=i % 10, timeout_s=60, max_attempts=3, metadata_={"i": i})


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Gate:
    """Holds the intake's first statement until the test has queued what it wants behind it; records the threads
    that write."""

    def __init__(self, db: Database) -> None:
        self.db, self.open, self.calls, self.threads = db, threading.Event(), 0, []

    def run_statement(self, work: Callable[[Any], Any]) -> Any:
        self.calls += 1
        self.threads.append(threading.current_thread())
        self.open.wait(30)
        return self.db.run_statement(work)


def submit_all(intake: Intake, jobs: list[Job]) -> dict[str, Any]:
    """Submit each job from its own thread; the outbox id or the exception, by job id."""
    out: dict[str, Any] = {}

    def one(job: Job) -> None:
        try:
            out[job.id] = intake.submit(job)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[job.id] = exc

    threads = [threading.Thread(target=one, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    return {"threads": threads, "out": out}


def test_concurrent_submits_share_statements_and_each_job_is_whole(db):
    gate = Gate(db)
    intake = Intake(gate)  # type: ignore[arg-type]
    first = new_job(0)
    started = submit_all(intake, [first])
    wait_for(lambda: gate.calls == 1)  # the first job's thread leads, and holds its statement
    rest = [new_job(i) for i in range(1, 41)]
    more = submit_all(intake, rest)
    wait_for(lambda: len(intake._pending) == 40)
    gate.open.set()
    for t in started["threads"] + more["threads"]:
        t.join(30)
    out = {**started["out"], **more["out"]}
    jobs = [first, *rest]
    assert all(isinstance(out[j.id], int) for j in jobs), out
    assert len(set(out.values())) == 41
    assert intake.statements == 3  # 1, then the 40 waiting behind it in groups of at most 32: 32 + 8
    assert all(t in started["threads"] + more["threads"] for t in gate.threads)  # request threads write, no other

    with db.session() as s:
        rows = {j.id: j for j in s.scalars(select(Job))}
        events = s.execute(select(JobEvent.job_id, JobEvent.type, JobEvent.message, JobEvent.data)).all()
        outbox = {o.id: o for o in s.scalars(select(Outbox))}
    assert set(rows) == {j.id for j in jobs}
    for j in jobs:
        row = rows[j.id]
        assert row.status == JobStatus.queued and row.attempts == 0 and row.input == j.input
        assert row.metadata_ == j.metadata_ and row.priority == j.priority
        assert row.created_at.tzinfo is not None
        box = outbox[out[j.id]]
        assert (box.job_id, box.queue, box.priority, box.sent_at) == (j.id, "echo.any", j.priority, None)
    assert sorted(e.job_id for e in events) == sorted(j.id for j in jobs)
    for e in events:
        assert e.type == "queued" and e.message == "queued on echo.any"
        assert e.data == {"queue": "echo.any", "priority": rows[e.job_id].priority}


def test_a_bad_job_in_a_group_fails_alone(db):
    gate = Gate(db)
    intake = Intake(gate)  # type: ignore[arg-type]
    started = submit_all(intake, [new_job(0)])
    wait_for(lambda: gate.calls == 1)
    bad = new_job(1, owner_id=999)  # no such owner: the foreign key refuses it
    good = [new_job(i) for i in range(2, 6)]
    more = submit_all(intake, [good[0], bad, *good[1:]])
    wait_for(lambda: len(intake._pending) == 5)
    gate.open.set()
    for t in started["threads"] + more["threads"]:
        t.join(30)
    out = more["out"]
    assert isinstance(out[bad.id], IntegrityError)
    assert all(isinstance(out[j.id], int) for j in good)
    with db.session() as s:
        ids = set(s.scalars(select(Job.id)))
    assert ids == {j.id for j in good} | set(started["out"]) and bad.id not in ids


def test_a_lone_submit_writes_on_its_own_thread(db):
    gate = Gate(db)
    gate.open.set()
    intake = Intake(gate)  # type: ignore[arg-type]
    for i in range(3):
        assert isinstance(intake.submit(new_job(i)), int)
    assert gate.threads == [threading.current_thread()] * 3 and intake.statements == 3
    with db.session() as s:
        assert len(s.scalars(select(Job.id)).all()) == 3


def test_the_api_writes_through_the_intake_on_postgresql_only(app, make_app, client, key):
    from tests.conftest import auth

    platform = app.extensions["llmos"]
    assert platform.intake is not None
    before = platform.intake.statements
    r = client.post("/jobs", json={"kind": "echo", "input": {"x": 1}}, headers=auth(key))
    assert r.status_code == 202, r.get_json()
    assert platform.intake.statements == before + 1
    assert make_app().extensions["llmos"].intake is None  # the embedded default (SQLite) writes in its session
