"""Job submission, reading, cancel and the worker-side state transitions (compare-and-set)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import Conflict, InvalidInput, NotFound
from app.models import TERMINAL, Job, JobEvent, JobStatus, Outbox, utcnow
from app.queue import ANY, queue_name
from app.schemas import DEFAULT_WEBHOOK_EVENTS, KINDS, ValidatedJob
from app.services import finetunes, registry, webhooks, workers
from app.services.pagination import page, paginate
from app.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = (JobStatus.running.value, JobStatus.cancelling.value)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def add_event(session: Session, job_id: str, type_: str, message: str = "", **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, message=message, data=data))


# ---- submission ----------------------------------------------------------------------------------------


def route(
    *, session: Session, kind: str, requested: list[str] | None, model_default: str | None,
    stale_after_s: float,
) -> tuple[list[str], str, str | None]:
    """Pick the queue for a job: the first requested type with a live worker, else one ever served, else
    the first asked for, with a warning the user sees at once in the job's events."""
    wanted = requested or ([model_default] if model_default else [ANY])
    if wanted == [ANY]:
        return wanted, queue_name(kind, ANY), None
    live = workers.live_gpu_types(session=session, stale_after_s=stale_after_s)
    for t in wanted:
        if t in live:
            return wanted, queue_name(kind, t), None
    served = workers.gpu_types_served(session=session)
    for t in wanted:
        if t in served:
            return wanted, queue_name(kind, t), None
    warning = (
        f"no worker has ever served gpu type {' or '.join(wanted)}; "
        "the job waits in its queue until such a worker starts"
    )
    return wanted, queue_name(kind, wanted[0]), warning


def submit_job(
    *, session: Session, settings: Settings, owner_id: int, spec: ValidatedJob, body_hash: str,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Write the job, its first event and its outbox row in the caller's transaction.
    Returns (job, created); an idempotent replay returns the existing job with created=False."""
    if idempotency_key is not None:
        existing = find_by_idempotency_key(session=session, owner_id=owner_id, key=idempotency_key)
        if existing is not None:
            return _replay(existing, body_hash), False
    env = spec.envelope
    entry = registry.get_model(session=session, name=env.model, owner_id=owner_id)
    if entry is None:
        raise InvalidInput(f"model {env.model!r} is not in the registry; GET /models lists them",
                           field="model", code="model_not_found")
    kind_spec = KINDS[env.kind]
    if entry.kind != kind_spec.model_kind:
        raise InvalidInput(f"model {env.model!r} is a {entry.kind} model; {env.kind} jobs need "
                           f"a {kind_spec.model_kind} model", field="model")
    timeout_s = env.timeout_s or settings.default_timeout_s
    if env.kind == "finetune":
        finetunes.check_submission(session=session, settings=settings, owner_id=owner_id, base=entry,
                                   input=spec.input, params=spec.params)
        timeout_s = env.timeout_s or settings.max_timeout_s
    requested = [env.gpu] if isinstance(env.gpu, str) else env.gpu
    gpu, queue, warning = route(session=session, kind=env.kind, requested=requested,
                                model_default=entry.default_gpu,
                                stale_after_s=settings.heartbeat_interval_s * 3)
    webhook, webhook_events = env.webhook, env.webhook_events
    if webhook is None:
        webhook, webhook_events = webhooks.default_webhook(session, owner_id) or (None, None)
    job = Job(
        id=new_id("job"), owner_id=owner_id, kind=env.kind, model=env.model, input=spec.input,
        params=spec.params, gpu=gpu, queue=queue, priority=env.priority, status=JobStatus.queued.value,
        timeout_s=timeout_s, metadata_=env.metadata,
        idempotency_key=idempotency_key, request_hash=body_hash,
        webhook=webhook, webhook_events=list(webhook_events or DEFAULT_WEBHOOK_EVENTS) if webhook else None,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "queued", f"queued on {queue}", queue=queue, priority=env.priority)
    if warning:
        add_event(session, job.id, "warning", warning, code="no_worker_for_gpu", gpu=gpu)
    session.add(Outbox(job_id=job.id, queue=queue, priority=env.priority))
    return job, True


def find_by_idempotency_key(*, session: Session, owner_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


def _replay(job: Job, body_hash: str) -> Job:
    if job.request_hash != body_hash:
        raise Conflict("this Idempotency-Key was used with a different request body",
                       field="Idempotency-Key", code="idempotency_key_reused")
    return job


def create_job(
    *, db: Database, settings: Settings, owner_id: int, spec: ValidatedJob, body: Any,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Submit in one transaction; a concurrent duplicate Idempotency-Key resolves to the first job."""
    body_hash = request_hash(body)
    try:
        with db.session() as session:
            return submit_job(session=session, settings=settings, owner_id=owner_id, spec=spec,
                              body_hash=body_hash, idempotency_key=idempotency_key)
    except IntegrityError:
        if idempotency_key is None:
            raise
        with db.session() as session:
            existing = find_by_idempotency_key(session=session, owner_id=owner_id, key=idempotency_key)
            if existing is None:
                raise
            return _replay(existing, body_hash), False


# ---- reading ------------------------------------------------------------------------------------------


def get_job(*, session: Session, owner_id: int, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner_id != owner_id:
        raise NotFound(f"no job {job_id!r}", code="job_not_found")
    return job


def list_jobs(
    *, session: Session, owner_id: int, limit: int, cursor: str | None, status: str | None = None,
    kind: str | None = None, model: str | None = None,
) -> tuple[list[Job], str | None]:
    stmt = select(Job).where(Job.owner_id == owner_id)
    if status:
        if status not in {s.value for s in JobStatus}:
            raise InvalidInput(f"unknown status {status!r}", field="status")
        stmt = stmt.where(Job.status == status)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if model:
        stmt = stmt.where(Job.model == model)
    stmt = paginate(stmt, created=Job.created_at, key=Job.id, cursor=cursor, limit=limit)
    return page(list(session.scalars(stmt)), limit, "created_at", "id")


def list_events(
    *, session: Session, owner_id: int, job_id: str, limit: int, cursor: str | None,
) -> tuple[list[JobEvent], str | None]:
    get_job(session=session, owner_id=owner_id, job_id=job_id)
    stmt = paginate(select(JobEvent).where(JobEvent.job_id == job_id), created=JobEvent.created_at,
                    key=JobEvent.id, cursor=cursor, limit=limit)
    return page(list(session.scalars(stmt)), limit, "created_at", "id")


def wait_for_job(*, db: Database, owner_id: int, job_id: str, wait_s: float) -> Job:
    """Long-poll: return as soon as the job ends, or after wait_s. No connection is held while waiting."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        with db.session() as session:
            job = get_job(session=session, owner_id=owner_id, job_id=job_id)
        left = deadline - time.monotonic()
        if JobStatus(job.status) in TERMINAL or left <= 0:
            return job
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.5)


def cancel_job(*, session: Session, owner_id: int, job_id: str) -> Job:
    """A queued job is cancelled at once and never runs; a running one is asked to stop."""
    job = get_job(session=session, owner_id=owner_id, job_id=job_id)
    now = utcnow()
    if job.status == JobStatus.queued.value:
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.queued.value)
            .values(status=JobStatus.cancelled.value, cancel_requested_at=now, finished_at=now,
                    error_code="cancelled", error_message="cancelled by the user before it ran")
        )
        if res.rowcount == 1:
            add_event(session, job_id, "cancelled", "cancelled before it ran")
            webhooks.job_event(session, job_id, "job.cancelled")
            session.flush()
            session.refresh(job)
            return job
        session.refresh(job)
    if job.status == JobStatus.running.value:
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value)
            .values(status=JobStatus.cancelling.value, cancel_requested_at=now)
        )
        if res.rowcount == 1:
            add_event(session, job_id, "cancelling", "cancel requested; the worker stops between steps")
        session.flush()
        session.refresh(job)
        return job
    if job.status in (JobStatus.cancelling.value, JobStatus.cancelled.value):
        return job
    raise Conflict(f"job {job_id} already {job.status}; only queued or running jobs can be cancelled",
                   code="job_finished")


# ---- worker side: compare-and-set transitions ----------------------------------------------------------


def claim_job(*, session: Session, job_id: str, worker_id: str) -> Job | None:
    """queued -> running. None when the job is not queued (duplicate delivery, cancelled, gone)."""
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.running.value, attempts=Job.attempts + 1, worker_id=worker_id,
                started_at=utcnow(), progress=None)
    )
    if res.rowcount != 1:
        return None
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    add_event(session, job_id, "running", f"started on {worker_id}", worker_id=worker_id,
              attempt=job.attempts)
    webhooks.job_event(session, job_id, "job.started")
    return job


def _finish(session: Session, job_id: str, attempt: int, status: JobStatus, **values: Any) -> bool:
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE), Job.attempts == attempt)
        .values(status=status.value, finished_at=utcnow(), **values)
    )
    if res.rowcount != 1:
        return False
    webhooks.job_event(session, job_id, f"job.{status.value}")  # succeeded | failed | cancelled
    return True


def complete_job(*, session: Session, job_id: str, attempt: int, output: dict[str, Any],
                 usage: dict[str, Any]) -> bool:
    done = _finish(session, job_id, attempt, JobStatus.succeeded, output=output, usage=usage)
    if done:
        add_event(session, job_id, "succeeded", "finished", usage=usage)
    return done


def fail_job(*, session: Session, job_id: str, attempt: int, code: str, message: str,
             usage: dict[str, Any] | None = None) -> bool:
    status = JobStatus.cancelled if code == "cancelled" else JobStatus.failed
    done = _finish(session, job_id, attempt, status, error_code=code, error_message=message, usage=usage)
    if done:
        add_event(session, job_id, status.value, message, code=code)
    return done


def record_progress(*, session: Session, job_id: str, attempt: int, done: int, total: int,
                    message: str = "", **metrics: Any) -> bool:
    """job.progress = {done, total, fraction, message, **metrics}; a `progress` event and webhook with the same."""
    progress = {"done": done, "total": total, "fraction": round(done / total, 4) if total else None,
                "message": message, **metrics}
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt)
        .values(progress=progress)
    )
    if res.rowcount != 1:
        return False
    add_event(session, job_id, "progress", message or f"{done}/{total}", done=done, total=total, **metrics)
    webhooks.job_event(session, job_id, "job.progress")
    return True


def hand_back(*, session: Session, job_id: str, attempt: int, reason: str) -> bool:
    """A stopping worker returns a running job to the queue (a user's cancel still wins)."""
    job = session.get(Job, job_id)
    if job is None:
        return False
    if job.status == JobStatus.cancelling.value:
        return _finish(session, job_id, attempt, JobStatus.cancelled, error_code="cancelled",
                       error_message="cancelled while running") and _event(session, job_id, "cancelled")
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt)
        .values(status=JobStatus.queued.value, worker_id=None, started_at=None)
    )
    if res.rowcount != 1:
        return False
    add_event(session, job_id, "retry", f"{reason}; handed back for attempt {attempt + 1}", attempt=attempt + 1)
    session.add(Outbox(job_id=job_id, queue=job.queue, priority=job.priority))
    return True


def _event(session: Session, job_id: str, type_: str) -> bool:
    add_event(session, job_id, type_, type_)
    return True


def cancel_requested(*, session: Session, job_ids: list[str]) -> set[str]:
    if not job_ids:
        return set()
    rows = session.scalars(
        select(Job.id).where(Job.id.in_(job_ids), Job.status == JobStatus.cancelling.value)
    )
    return set(rows)
