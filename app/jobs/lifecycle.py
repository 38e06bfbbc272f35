"""The only code that changes a job's status (a test fails if any other module updates the jobs table).

Each transition is one function that runs in the caller's transaction (one `with db.session()`) and does, in
that transaction, the compare-and-set on (status, attempt) along an edge of states.TRANSITIONS, the event row,
and the outbox / webhook-delivery rows the transition implies. A transition that finds the job elsewhere (a
duplicate delivery, a late worker, a cancel that won) changes nothing and returns False / None.

Wake-ups for other processes (a job ended: long-polls; a cancel: its worker) are noted on the session and sent
by `Database.session` after the commit, never before.

A batch's chunks are jobs with `batch_id` set: the same transitions run them; the batch's own status moves
here too (started with its first chunk, cancelling, finished once by its finaliser).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Table,
    bindparam,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from app.db import rowcount
from app.errors import Conflict, NotFound
from app.jobs.states import TRANSITIONS, JobStatus, sources
from app.models import Batch, BatchItem, Job, JobEvent, Outbox, UTCDateTime, WebhookDelivery, utcnow
from app.schemas import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_FILTERS, iso, job_public

Also = Callable[[Session], None]
# a transaction's session, or a connection in autocommit for a transition that is one statement (an outcome with
# no webhook to queue and nothing else to write: app.db.Database.run_statement)
Executor = Session | Connection  # more writes that belong to the same transaction (items, a new model)


ENDED = "ended"  # signal channels (app.jobs.signals)
CANCEL = "cancel"
INVALIDATE = "invalidate"

_NO_SYNC = {"synchronize_session": False}
JOBS = cast(Table, Job.__table__)

# POST /jobs on PostgreSQL: jobs, their `queued` events and their outbox rows in one statement (data-modifying
# CTEs: one round trip, and one commit on an autocommit connection), for a group of up to MAX_GROUP jobs
# (app.jobs.intake). Columns are the Job attributes a submission sets.
_SUBMIT_COLUMNS = [(a.columns[0].name, a.key) for a in inspect(Job).column_attrs if a.key in (
    "id", "owner_id", "kind", "model", "input", "params", "gpu", "queue", "priority", "batch_id", "status",
    "attempts", "max_attempts", "timeout_s", "metadata_", "idempotency_key", "request_hash", "webhook",
    "webhook_events", "created_at", "updated_at", "cache_key")]
MAX_GROUP = 32


@functools.lru_cache(maxsize=MAX_GROUP)
def _submit_sql(n: int) -> tuple[TextClause, list[list[tuple[str, str]]]]:
    """The statement for n jobs (built once per n), and each job's (parameter, attribute) names."""
    names = [[(f"{c}_{i}", a) for c, a in _SUBMIT_COLUMNS] for i in range(n)]
    values = ", ".join("(" + ", ".join(":" + p for p, _ in row) + ")" for row in names)
    sql = text(
        f"WITH j AS (INSERT INTO jobs ({', '.join(c for c, _ in _SUBMIT_COLUMNS)}) VALUES {values} "
        "RETURNING id, queue, priority), "
        "e AS (INSERT INTO job_events (job_id, type, message, data, created_at) "
        "SELECT id, 'queued', 'queued on ' || queue, json_build_object('queue', queue, 'priority', priority), :now "
        "FROM j) "
        "INSERT INTO outbox (job_id, queue, priority, created_at) SELECT id, queue, priority, :now FROM j "
        "RETURNING id, job_id"
    ).bindparams(*(bindparam(f"{c}_{i}", type_=JOBS.c[c].type) for i in range(n) for c, _ in _SUBMIT_COLUMNS),
                 bindparam("now", type_=UTCDateTime()))
    return sql, names


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def note(session: Executor, channel: str, value: str) -> None:
    """A wake-up to send once this transaction commits (Database.session sends them)."""
    session.info.setdefault("llmos.signals", []).append((channel, value))


_EVENT = insert(cast(Table, JobEvent.__table__))  # built once: the hot paths build no statement per call


def add_event(session: Session, job_id: str, type_: str, message: str = "", **data: Any) -> None:
    """An event on a job's timeline that changes nothing else (dataset read, training started, ...)."""
    session.execute(_EVENT, {"job_id": job_id, "type": type_, "message": message, "data": data,
                             "created_at": utcnow()})


def _events(session: Executor, rows: list[dict[str, Any]]) -> None:
    if rows:
        now = utcnow()
        session.execute(_EVENT, [{"message": "", "data": {}, "created_at": now, **r} for r in rows])


def _webhook(session: Executor, job_id: str, type_: str, url: str | None, events: list[str] | None) -> None:
    """A delivery row for `type_` when the job's webhook filter takes it; nothing is read for jobs without one."""
    if not url or WEBHOOK_FILTERS[type_] not in (events or DEFAULT_WEBHOOK_EVENTS):
        return
    assert isinstance(session, Session), "a webhook delivery is written in the transition's transaction"

    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    # the compare-and-set above holds the job's row, so no other transaction numbers this job meanwhile
    seq = (session.scalar(select(func.max(WebhookDelivery.seq)).where(WebhookDelivery.job_id == job_id)) or 0) + 1
    now = utcnow()
    session.add(WebhookDelivery(
        id=new_id("whd"), job_id=job_id, seq=seq, owner_id=job.owner_id, event_type=type_, url=url,
        payload={"type": type_, "timestamp": iso(now), "data": job_public(job)}, webhook_id=new_id("msg"),
        status="pending", attempts=0, next_attempt_at=now, created_at=now,
    ))
    session.flush()


_CAS: dict[tuple[Any, ...], Any] = {}  # (transition, value keys, guarded by attempt, returning) -> statement


def _cas(session: Executor, name: str, job_id: str, attempt: int | None, values: dict[str, Any],
         *returning: Any, event: tuple[str, str, dict[str, Any]] | None = None) -> Any:
    """UPDATE jobs ... WHERE id AND status IN (the transition's sources) [AND attempts = attempt] RETURNING ...,
    and the transition's event row (type, message, data; the new attempt number is added to data as `attempt`
    when the transition moves it) when the update took: on PostgreSQL in the same statement (a data-modifying
    CTE), elsewhere in a second one.

    Each shape of statement is built once and then run with parameters. A value that is an SQL expression
    (attempts + 1) is part of the statement; every other value is a parameter."""
    keys = tuple(sorted(values))
    in_cte = event is not None and _dialect(session) == "postgresql"
    cache_key = (name, keys, attempt is not None, tuple(str(r) for r in returning), in_cte)
    stmt = _CAS.get(cache_key)
    if stmt is None:
        table = JOBS
        guard: list[ColumnElement[bool]] = [table.c.id == bindparam("p_id"),
                                            or_(*(table.c.status == s for s in sources(name)))]
        if attempt is not None:
            guard.append(table.c.attempts == bindparam("p_attempt"))
        sets: dict[Any, Any] = {table.c.status: TRANSITIONS[name].target, table.c.updated_at: bindparam("p_now")}
        for key in keys:
            column = getattr(Job, key).property.columns[0]
            value = values[key]
            sets[column] = value if isinstance(value, ColumnElement) else bindparam(f"v_{key}", type_=column.type)
        stmt = update(table).where(*guard).values(sets).returning(*returning, Job.webhook, Job.webhook_events,
                                                                 table.c.attempts.label("new_attempt"))
        if in_cte:
            u = stmt.returning(table.c.id.label("cas_id")).cte("u")
            data = cast_(bindparam("e_data", type_=JSONB()).op("||")(
                func.jsonb_build_object("attempt", u.c.new_attempt)) if "attempts" in values
                else bindparam("e_data", type_=JSONB()), JSON())
            e = insert(cast(Table, JobEvent.__table__)).from_select(
                ["job_id", "type", "message", "data", "created_at"],
                select(u.c.cas_id, bindparam("e_type"), bindparam("e_message"), data, bindparam("p_now"))).cte("e")
            stmt = select(*(c for c in u.c if c.name != "cas_id")).add_cte(e)
        _CAS[cache_key] = stmt
    now = utcnow()
    params = {f"v_{k}": v for k, v in values.items() if not isinstance(v, ColumnElement)}
    params.update(p_id=job_id, p_now=now)
    if attempt is not None:
        params["p_attempt"] = attempt
    if in_cte:
        assert event is not None
        params.update(e_type=event[0], e_message=event[1], e_data=event[2])
    row = session.execute(stmt, params).one_or_none()
    if row is None:
        return None
    if event is not None and not in_cte:
        event_data = {**event[2], "attempt": row[-1]} if "attempts" in values else event[2]
        session.execute(_EVENT, {"job_id": job_id, "type": event[0], "message": event[1], "data": event_data,
                                 "created_at": now})
    return row[:-1]


def _dialect(session: Executor) -> str:
    return str(session.dialect.name if isinstance(session, Connection) else session.get_bind().dialect.name)


# ---- submit --------------------------------------------------------------------------------------------


def _queued(job: Job, now: datetime) -> None:
    job.status = JobStatus.queued
    job.attempts = 0
    job.created_at = job.updated_at = now
    if job.metadata_ is None:
        job.metadata_ = {}


def submit(session: Session, job: Job, *, warning: str | None = None,
           warning_data: dict[str, Any] | None = None) -> int:
    """A new queued job, its `queued` event (and a `warning` one) and its outbox row, in the caller's
    transaction. Returns the outbox row's id (what the fast path marks sent after publishing). On PostgreSQL the
    job, event and outbox row are one statement (`submit_all`)."""
    if _dialect(session) == "postgresql":
        outbox_id = submit_all(session, [job])[0]
        if warning:
            session.execute(_EVENT, {"job_id": job.id, "type": "warning", "message": warning,
                                     "data": warning_data or {}, "created_at": job.created_at})
        return outbox_id
    now = utcnow()
    _queued(job, now)
    events = [("queued", f"queued on {job.queue}", {"queue": job.queue, "priority": job.priority})]
    if warning:
        events.append(("warning", warning, warning_data or {}))
    box = Outbox(job_id=job.id, queue=job.queue, priority=job.priority, created_at=now)
    session.add_all([job, *(JobEvent(job_id=job.id, type=t, message=m, data=d, created_at=now)
                            for t, m, d in events), box])
    session.flush()
    return box.id


def submit_all(session: Session | Connection, jobs: list[Job]) -> list[int]:
    """New queued jobs on PostgreSQL (up to MAX_GROUP), each with its `queued` event and outbox row, in one
    statement: on an autocommit connection one round trip and one commit for them all (app.jobs.intake groups
    the jobs of concurrent requests this way). Returns the outbox rows' ids in the jobs' order."""
    sql, names = _submit_sql(len(jobs))
    now = utcnow()
    params: dict[str, Any] = {"now": now}
    for job, row in zip(jobs, names, strict=True):
        _queued(job, now)
        params.update({p: getattr(job, a) for p, a in row})
    outbox = {job_id: int(outbox_id) for outbox_id, job_id in session.execute(sql, params)}
    return [outbox[job.id] for job in jobs]


def submit_answered(session: Session, job: Job, *, output: dict[str, Any], usage: dict[str, Any],
                    message: str) -> None:
    """A new job that is already answered (from the result cache): inserted succeeded, with its `queued` and
    `succeeded` events and its completion webhook, in the caller's transaction; nothing is published."""
    now = utcnow()
    job.status = JobStatus.succeeded
    job.attempts = 0
    job.created_at = job.updated_at = job.finished_at = now
    job.output, job.usage = output, usage
    if job.metadata_ is None:
        job.metadata_ = {}
    session.add(job)
    session.flush()
    _events(session, [{"job_id": job.id, "type": "queued", "message": f"queued on {job.queue}",
                       "data": {"queue": job.queue, "priority": job.priority}},
                      {"job_id": job.id, "type": "succeeded", "message": message, "data": {"cached": True}}])
    _webhook(session, job.id, "job.succeeded", job.webhook, job.webhook_events)
    note(session, ENDED, job.id)


def submit_many(session: Session, rows: list[dict[str, Any]]) -> list[tuple[int, str, str, int]]:
    """Many new queued jobs at once (a batch's chunks): bulk inserts, no per-row round trip.
    Returns (outbox id, job id, queue, priority) for the fast path."""
    if not rows:
        return []
    now = utcnow()
    session.execute(insert(Job), [{"status": JobStatus.queued, "attempts": 0, "created_at": now,
                                             "updated_at": now, "metadata": {}, **r} for r in rows])
    _events(session, [{"job_id": r["id"], "type": "queued", "message": f"queued on {r['queue']}",
                       "data": {"queue": r["queue"], "priority": r["priority"]}} for r in rows])
    ids = session.execute(insert(Outbox).returning(Outbox.id, Outbox.job_id, Outbox.queue, Outbox.priority),
                          [{"job_id": r["id"], "queue": r["queue"], "priority": r["priority"], "created_at": now}
                           for r in rows]).all()
    return [tuple(r) for r in ids]  # type: ignore[misc]


def republish(session: Session, *, job_id: str, queue: str, priority: int, reason: str) -> bool:
    """A queued job whose message was lost gets a new outbox row (no status change)."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status != JobStatus.queued:
        return False
    session.add(Outbox(job_id=job_id, queue=queue, priority=priority, created_at=utcnow()))
    add_event(session, job_id, "republished", reason)
    return True


# ---- the worker's side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a worker needs to run a job, read by the claim itself (UPDATE ... RETURNING)."""

    id: str
    kind: str
    model: str | None
    input: dict[str, Any]
    params: dict[str, Any]
    timeout_s: int
    attempt: int
    owner_id: int
    batch_id: str | None
    started_at: datetime
    has_webhook: bool = False  # its outcome has a delivery to queue: it cannot be a single statement
    created_at: datetime | None = None  # when it was submitted (queued -> running time, in the worker's metrics)
    cache_key: str | None = None  # its result goes to the result cache under this key


def claim(session: Session, *, job_id: str, worker_id: str) -> Claim | None:
    """queued -> running, attempt + 1. None when the job is not queued (duplicate delivery, cancelled, gone)."""
    now = utcnow()
    row = _cas(session, "claim", job_id, None,
               {"attempts": Job.attempts + 1, "worker_id": worker_id, "started_at": now, "progress": None},
               Job.kind, Job.model, Job.input, Job.params, Job.timeout_s, Job.attempts, Job.owner_id, Job.batch_id,
               Job.created_at, Job.cache_key, event=("running", f"started on {worker_id}", {"worker_id": worker_id}))
    if row is None:
        return None
    kind, model, input_, params, timeout_s, attempt, owner_id, batch_id, created_at, cache_key, url, events = row
    if batch_id is not None:  # the batch starts with its first chunk
        session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == JobStatus.queued)
                        .values(status=JobStatus.running, started_at=now, updated_at=now),
                        execution_options=_NO_SYNC)
    _webhook(session, job_id, "job.started", url, events)
    return Claim(job_id, kind, model, dict(input_), dict(params or {}), timeout_s, attempt, owner_id, batch_id, now,
                 url is not None, created_at, cache_key)


def owner_at_quota(session: Session, *, job_id: str, max_running: int) -> bool:
    """Whether the owner of this queued job already runs `max_running` jobs; called in the claim's transaction.
    On PostgreSQL the owner's claims queue behind a transaction lock here, so that two workers cannot both take
    the last free place (SQLite runs one write transaction at a time anyway)."""
    owner = session.scalar(select(Job.owner_id).where(Job.id == job_id))
    if owner is None:
        return False
    if _dialect(session) == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"llmos-running:{owner}"))))
    running = session.scalar(select(func.count()).select_from(Job).where(
        Job.owner_id == owner, Job.status.in_((JobStatus.running, JobStatus.cancelling))))
    return int(running or 0) >= max_running


def progress(session: Session, *, job_id: str, attempt: int, done: int, total: int, message: str = "",
             **metrics: Any) -> bool:
    """job.progress = {done, total, fraction, message, **metrics}; a `progress` event and webhook with the same."""
    value = {"done": done, "total": total, "fraction": round(done / total, 4) if total else None,
             "message": message, **metrics}
    row = _cas(session, "progress", job_id, attempt, {"progress": value})
    if row is None:
        return False
    add_event(session, job_id, "progress", message or f"{done}/{total}", done=done, total=total, **metrics)
    _webhook(session, job_id, "job.progress", *row)
    return True


def hold(session: Session, *, job_id: str, attempt: int) -> bool:
    """Lock the job's row for the rest of the transaction if `attempt` still owns it (a checkpoint is written only
    by the current attempt; a concurrent hand-back waits for it)."""
    stmt = select(Job.id).where(Job.id == job_id, Job.attempts == attempt,
                                Job.status.in_(sources("succeed"))).with_for_update()
    return session.scalar(stmt) is not None


def _end(session: Executor, name: str, job_id: str, attempt: int | None, values: dict[str, Any],
         message: str, data: dict[str, Any], also: Also | None = None,
         first: list[dict[str, Any]] | None = None) -> bool:
    """A transition into a terminal state; `first`: happenings that led to it, on the timeline before it."""
    target = TRANSITIONS[name].target
    event = (target.value, message, data)
    row = _cas(session, name, job_id, attempt, {"finished_at": utcnow(), **values},
               event=None if first else event)
    if row is None:
        return False
    if first:
        _events(session, [*first, {"job_id": job_id, "type": event[0], "message": event[1], "data": event[2]}])
    url, events = row
    if also is not None:
        assert isinstance(session, Session), "writes that come along need a transaction"
        also(session)
    _webhook(session, job_id, f"job.{target.value}", url, events)
    note(session, ENDED, job_id)
    return True


def succeed(session: Executor, *, job_id: str, attempt: int, output: dict[str, Any], usage: dict[str, Any],
            also: Also | None = None) -> bool:
    """running | cancelling -> succeeded, with its output; `also` writes what must commit with it (the model a
    fine-tune registers, a chunk's documents)."""
    return _end(session, "succeed", job_id, attempt, {"output": output, "usage": usage}, "finished",
                {"usage": usage}, also)


def fail(session: Executor, *, job_id: str, attempt: int, code: str, message: str,
         usage: dict[str, Any] | None = None, output: dict[str, Any] | None = None, also: Also | None = None) -> bool:
    """running | cancelling -> failed (or cancelled, for code `cancelled`: the worker stopped on a cancel).
    `output` keeps what a stopped job made before it stopped."""
    name = "stop_cancelled" if code == "cancelled" else "fail"
    values: dict[str, Any] = {"error_code": code, "error_message": message, "usage": usage}
    if output is not None:
        values["output"] = output
    return _end(session, name, job_id, attempt, values, message, {"code": code}, also)


def hand_back(session: Session, *, job_id: str, attempt: int, reason: str, also: Also | None = None) -> bool:
    """A stopping worker returns a running job to the queue for its next attempt (with a new outbox row); a
    user's cancel that came meanwhile wins and ends it cancelled."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status == JobStatus.cancelling:
        return fail(session, job_id=job_id, attempt=attempt, code="cancelled", message="cancelled while running",
                    also=also)
    row = _cas(session, "hand_back", job_id, attempt, {"worker_id": None, "started_at": None},
               Job.queue, Job.priority)
    if row is None:
        return False
    queue, priority, _url, _events_ = row
    add_event(session, job_id, "retry", f"{reason}; handed back for attempt {attempt + 1}", attempt=attempt + 1)
    session.add(Outbox(job_id=job_id, queue=queue, priority=priority, created_at=utcnow()))
    if also is not None:
        also(session)
    return True


# ---- the user's side -----------------------------------------------------------------------------------


def get_owned(session: Session, *, owner_id: int, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner_id != owner_id:
        raise NotFound(f"no job {job_id!r}", code="job_not_found")
    return job


def cancel(session: Session, *, owner_id: int, job_id: str) -> Job:
    """A queued job is cancelled at once and never runs; a running one is asked to stop (its worker hears it at
    once through the signals, or within a few seconds by its fallback poll)."""
    job = get_owned(session, owner_id=owner_id, job_id=job_id)
    now = utcnow()
    if job.status == JobStatus.queued:
        if _end(session, "cancel_queued", job_id, None,
                {"cancel_requested_at": now, "error_code": "cancelled",
                 "error_message": "cancelled by the user before it ran"}, "cancelled before it ran", {}):
            session.refresh(job)
            return job
        session.refresh(job)
    if job.status == JobStatus.running:
        if _cas(session, "request_cancel", job_id, None, {"cancel_requested_at": now}) is not None:
            add_event(session, job_id, "cancelling", "cancel requested; the worker stops between steps")
            note(session, CANCEL, job_id)
        session.refresh(job)
        return job
    if job.status in (JobStatus.cancelling, JobStatus.cancelled):
        return job
    raise Conflict(f"job {job_id} already {job.status}; only queued or running jobs can be cancelled",
                   code="job_finished")


# ---- the scheduler's side ------------------------------------------------------------------------------


def recover_lost(session: Session, *, job_id: str, status: str, attempt: int, max_attempts: int,
                 worker_id: str | None) -> str | None:
    """The worker of a running job stopped heart-beating: re-queue it for its next attempt, fail it with
    `worker_lost` when it has used its attempts, or end it cancelled when a cancel was under way.
    Returns what happened ("requeued", "failed", "cancelled") or None when the job had moved on."""
    msg = f"worker {worker_id} stopped heart-beating during attempt {attempt}"
    lost = {"worker_id": worker_id, "attempt": attempt}
    first = [{"job_id": job_id, "type": "worker_lost", "message": msg, "data": lost}]
    if status == JobStatus.cancelling:
        if _end(session, "cancel_lost", job_id, attempt,
                {"error_code": "cancelled", "error_message": "cancelled (its worker was lost while stopping)"},
                "cancelled", {"code": "cancelled"}, first=first):
            return "cancelled"
        return None
    if attempt >= max_attempts:
        if _end(session, "fail_lost", job_id, attempt,
                {"error_code": "worker_lost", "error_message": f"{msg}; no attempts left ({attempt}/{max_attempts})"},
                "no attempts left", {"code": "worker_lost"}, first=first):
            return "failed"
        return None
    row = _cas(session, "requeue_lost", job_id, attempt, {"worker_id": None, "started_at": None},
               Job.queue, Job.priority)
    if row is None:
        return None
    queue, priority, _url, _events_ = row
    _events(session, [
        {"job_id": job_id, "type": "worker_lost", "message": msg, "data": lost},
        {"job_id": job_id, "type": "retry", "message": f"re-queued for attempt {attempt + 1}",
         "data": {"attempt": attempt + 1, "queue": queue}},
    ])
    session.add(Outbox(job_id=job_id, queue=queue, priority=priority, created_at=utcnow()))
    return "requeued"


def expire(session: Session, *, job_id: str, attempt: int, message: str) -> bool:
    """A job running past its time limit whose worker did not stop it (hung, or a chunk stuck) fails `timeout`;
    the worker's late outcome then changes nothing."""
    return _end(session, "expire", job_id, attempt, {"error_code": "timeout", "error_message": message}, message,
                {"code": "timeout"})


# ---- batches: their status follows their chunks ----------------------------------------------------------


def cancel_batch(session: Session, *, owner_id: int, batch_id: str) -> Batch:
    """queued | running -> cancelling: chunks not started are cancelled with their documents; running chunks
    finish, and what finished stays in the output. `cancelled` once finalised."""
    b = session.get(Batch, batch_id)
    if b is None or b.owner_id != owner_id:
        raise NotFound(f"no batch {batch_id!r}", code="batch_not_found")
    if b.status in (JobStatus.cancelling, JobStatus.cancelled):
        return b
    now = utcnow()
    res = session.execute(update(Batch).where(
        Batch.id == batch_id, Batch.status.in_((JobStatus.queued, JobStatus.running)))
        .values(status=JobStatus.cancelling, cancel_requested_at=now, updated_at=now),
        execution_options=_NO_SYNC)
    if rowcount(res) != 1:
        session.refresh(b)
        raise Conflict(f"batch {batch_id} already {b.status}; only queued or running batches can be cancelled",
                       code="batch_finished")
    t = TRANSITIONS["cancel_queued"]
    cancelled = session.execute(
        update(Job).where(Job.batch_id == batch_id, Job.status.in_(sources("cancel_queued")))
        .values(status=t.target, finished_at=now, updated_at=now, cancel_requested_at=now,
                error_code="cancelled", error_message="batch cancelled before this chunk ran")
        .returning(Job.id, Job.input), execution_options=_NO_SYNC).all()
    _events(session, [{"job_id": jid, "type": "cancelled", "message": "batch cancelled"} for jid, _ in cancelled])
    seqs = [inp["seq"] for _, inp in cancelled]
    for start in range(0, len(seqs), 1000):
        session.execute(update(BatchItem).where(BatchItem.batch_id == batch_id, BatchItem.status == "queued",
                                                BatchItem.chunk.in_(seqs[start:start + 1000]))
                        .values(status="cancelled", error_code="cancelled", error_message="batch cancelled"),
                        execution_options=_NO_SYNC)
    session.refresh(b)
    return b


def finish_batch(session: Session, *, batch_id: str, claim_at: datetime, values: dict[str, Any],
                 event: Callable[[Session, str], object]) -> bool:
    """The batch's final state, once: compare-and-set on the finaliser's claim. `event` queues its webhook."""
    b = session.get(Batch, batch_id)
    if b is None:
        return False
    res = session.execute(update(Batch).where(
        Batch.id == batch_id, Batch.status == b.status, Batch.finalizing_at == claim_at,
        Batch.output_file_id.is_(None)).values(finished_at=utcnow(), updated_at=utcnow(), **values),
        execution_options=_NO_SYNC)
    if rowcount(res) != 1:
        return False
    session.expire(b)
    event(session, f"batch.{values['status']}")
    return True


def statuses_of(session: Session, job_ids: Iterable[str]) -> dict[str, JobStatus]:
    ids = list(job_ids)
    rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all() if ids else []
    return {job_id: status for job_id, status in rows}
