"""Jobs for the API: validate against the kind's declaration, route, submit through the core, read, wait.

The common POST is one transaction of three inserts (job, event, outbox): the key, the model, the owner's
default webhook and the live GPU types come from app.services.lookups."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import ApiError, Conflict, InvalidInput
from app.jobs import kinds, lifecycle
from app.jobs.intake import Intake
from app.jobs.signals import Waiters
from app.jobs.states import TERMINAL, JobStatus
from app.models import Job, JobEvent, ModelEntry
from app.queue import ANY, queue_name
from app.schemas import DEFAULT_WEBHOOK_EVENTS, ValidatedJob
from app.services import result_cache
from app.services.lookups import Lookups
from app.services.pagination import page, paginate, paginate_oldest_first
from app.services.result_cache import ResultCache
from app.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.2  # long-poll re-read interval where no wake-up signals reach this process (and a safety net)


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def route(*, family: str, requested: list[str] | None, model_default: str | None,
          live: frozenset[str], served: frozenset[str]) -> tuple[list[str], str, str | None]:
    """Pick the queue for a job: the first requested type with a live worker, else one ever served, else the
    first asked for, with a warning the user sees at once in the job's events."""
    wanted = requested or ([model_default] if model_default else [ANY])
    if wanted == [ANY]:
        return wanted, queue_name(family, ANY), None
    for pool in (live, served):
        for t in wanted:
            if t in pool:
                return wanted, queue_name(family, t), None
    warning = (
        f"no worker has ever served gpu type {' or '.join(wanted)}; "
        "the job waits in its queue until such a worker starts"
    )
    return wanted, queue_name(family, wanted[0]), warning


def route_for(*, db: Database, lookups: Lookups, settings: Settings, family: str, gpu: str | list[str] | None,
              model_default: str | None) -> tuple[list[str], str, str | None]:
    requested = [gpu] if isinstance(gpu, str) else gpu
    wanted = requested or ([model_default] if model_default else [ANY])
    if wanted == [ANY]:  # no need to know the workers
        return wanted, queue_name(family, ANY), None
    live, served = lookups.gpu_types(db, settings.heartbeat_interval_s * 3)
    return route(family=family, requested=requested, model_default=model_default, live=live, served=served)


def _replay(job: Job, body_hash: str | None) -> Job:
    if job.request_hash != body_hash:
        raise Conflict("this Idempotency-Key was used with a different request body",
                       field="Idempotency-Key", code="idempotency_key_reused")
    return job


class QueuedCounts:
    """An owner's queued jobs: counted in the database at most once a second per process, plus what this
    process submitted since (so a burst from one client is counted exactly; across processes within a second)."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._counts: dict[int, tuple[float, int]] = {}

    def get(self, db: Database, owner_id: int) -> int:
        now = time.monotonic()
        hit = self._counts.get(owner_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        with db.session() as session:
            n = int(session.scalar(select(func.count()).select_from(Job).where(
                Job.owner_id == owner_id, Job.status == JobStatus.queued)) or 0)
        with self._lock:
            self._counts[owner_id] = (now + self.ttl_s, n)
        return n

    def added(self, owner_id: int) -> None:
        with self._lock:
            hit = self._counts.get(owner_id)
            if hit is not None:
                self._counts[owner_id] = (hit[0], hit[1] + 1)


QUEUED = QueuedCounts()


def check_quota(*, db: Database, settings: Settings, owner_id: int) -> None:
    """429 once an owner has LLMOS_MAX_QUEUED_JOBS jobs waiting."""
    if QUEUED.get(db, owner_id) >= settings.max_queued_jobs:
        raise ApiError(f"you have {settings.max_queued_jobs} or more jobs queued (LLMOS_MAX_QUEUED_JOBS); wait for "
                       "some to run", code="quota_exceeded", status=429, headers={"Retry-After": "5"})


def find_by_idempotency_key(*, session: Session, owner_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


def create_job(
    *, db: Database, lookups: Lookups, settings: Settings, owner_id: int, spec: ValidatedJob, body: Any,
    idempotency_key: str | None, cache: ResultCache | None = None, intake: Intake | None = None,
) -> tuple[Job, tuple[int, str, str, int] | None]:
    """Submit in one transaction (with `intake`, on PostgreSQL: in the statement of a group of concurrent
    submits). Returns the job and its outbox row to publish (None for an idempotent replay:
    the same key and body give the first job back; and for a request the result cache answered, whose job is
    written already succeeded)."""
    env = spec.envelope
    kind = kinds.get(env.kind)
    assert kind is not None
    body_hash = request_hash(body) if idempotency_key is not None else None  # only a replay compares it
    check_quota(db=db, settings=settings, owner_id=owner_id)
    model = None
    if kind.model_kind is not None:
        model = lookups.model(db, env.model or "", owner_id)
        if model is None:
            raise InvalidInput(f"model {env.model!r} is not in the registry; GET /models lists them",
                               field="model", code="model_not_found")
        if model.kind not in kind.model_kinds:
            raise InvalidInput(f"model {env.model!r} is a {model.kind} model; {env.kind} jobs need "
                               f"a {' or '.join(kind.model_kinds)} model", field="model")
    gpu, queue, warning = route_for(db=db, lookups=lookups, settings=settings, family=kind.queue, gpu=env.gpu,
                                    model_default=model.default_gpu if model else None)
    webhook: str | None = env.webhook
    webhook_events: list[str] | None = list(env.webhook_events) if env.webhook_events else None
    if webhook is None:
        webhook, webhook_events = lookups.default_webhook(db, owner_id) or (None, None)
    key: str | None = None
    hit = None
    if cache is not None and cache.enabled and env.cache and model is not None \
            and result_cache.cacheable(env.kind, spec.params):
        key = result_cache.cache_key(owner_id=owner_id, model_fingerprint=model.fingerprint, kind=env.kind,
                                     input=spec.input, params=spec.params)
        hit = cache.get(key)

    def new_job() -> Job:
        return Job(
            id=lifecycle.new_id("job"), owner_id=owner_id, kind=env.kind, model=env.model, input=spec.input,
            params=spec.params, gpu=gpu, queue=queue, priority=env.priority,
            timeout_s=env.timeout_s or kind.default_timeout_s or settings.default_timeout_s,
            max_attempts=kind.max_attempts, metadata_=env.metadata, idempotency_key=idempotency_key,
            request_hash=body_hash, webhook=webhook,
            webhook_events=list(webhook_events or DEFAULT_WEBHOOK_EVENTS) if webhook else None,
            cache_key=key,
        )

    def write(session: Session) -> tuple[Job, tuple[int, str, str, int] | None]:
        if idempotency_key is not None:
            existing = find_by_idempotency_key(session=session, owner_id=owner_id, key=idempotency_key)
            if existing is not None:
                return _replay(existing, body_hash), None
        if kind.check is not None:
            entry = session.get(ModelEntry, env.model) if env.model else None
            kinds.load(kind.check)(session=session, settings=settings, owner_id=owner_id, base=entry,
                                   input=spec.input, params=spec.params)
        job = new_job()
        if hit is not None:  # answered without a model: the job is written succeeded, nothing is published
            job.cache_key = None
            lifecycle.submit_answered(session, job, output=hit[0], usage={**(hit[1] or {}), "cached": True},
                                      message="answered from the result cache")
            return job, None
        outbox_id = lifecycle.submit(session, job, warning=warning,
                                     warning_data={"code": "no_worker_for_gpu", "gpu": gpu} if warning else None)
        return job, (outbox_id, job.id, job.queue, job.priority)

    try:
        # the common case on PostgreSQL: one statement, atomic alone (no BEGIN, no COMMIT), shared with the
        # concurrent requests of this process (app.jobs.intake)
        done: tuple[Job, tuple[int, str, str, int] | None]
        if intake is not None and idempotency_key is None and kind.check is None and warning is None \
                and hit is None:
            job = new_job()
            done = job, (intake.submit(job), job.id, job.queue, job.priority)
        else:
            done = db.run(write)
        if done[1] is not None:
            QUEUED.added(owner_id)
        return done
    except IntegrityError:  # a concurrent POST with the same Idempotency-Key won
        if idempotency_key is None:
            raise
        with db.session() as session:
            existing = find_by_idempotency_key(session=session, owner_id=owner_id, key=idempotency_key)
            if existing is None:
                raise
            return _replay(existing, body_hash), None


# ---- reading ------------------------------------------------------------------------------------------


def get_job(*, session: Session, owner_id: int, job_id: str) -> Job:
    return lifecycle.get_owned(session, owner_id=owner_id, job_id=job_id)


def list_jobs(
    *, session: Session, owner_id: int, limit: int, cursor: str | None, status: str | None = None,
    kind: str | None = None, model: str | None = None, batch_id: str | None = None,
) -> tuple[list[Job], str | None]:
    """An owner's jobs, newest first. A batch's chunks are listed only when asked for with `batch_id`."""
    stmt = select(Job).where(Job.owner_id == owner_id)
    stmt = stmt.where(Job.batch_id == batch_id) if batch_id else stmt.where(Job.batch_id.is_(None))
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
    *, session: Session, owner_id: int, job_id: str, limit: int, cursor: str | None, order: str = "asc",
) -> tuple[list[JobEvent], str | None]:
    """A job's timeline: oldest first, or `order="desc"` newest first."""
    get_job(session=session, owner_id=owner_id, job_id=job_id)
    how = paginate_oldest_first if order == "asc" else paginate
    stmt = how(select(JobEvent).where(JobEvent.job_id == job_id), created=JobEvent.created_at,
               key=JobEvent.id, cursor=cursor, limit=limit)
    return page(list(session.scalars(stmt)), limit, "created_at", "id")


def wait_for_job(*, db: Database, waiters: Waiters, owner_id: int, job_id: str, wait_s: float,
                 bounded: bool = True) -> tuple[Job, bool]:
    """Long-poll: return as soon as the job ends (woken by its `ended` signal), or after wait_s. No connection
    is held while waiting. Where no signal reaches this process the job is re-read every POLL_S. A `bounded`
    wait takes one of the process's long-poll slots; with none free it answers at once. Returns the job and
    whether it waited."""
    deadline = time.monotonic() + wait_s
    with waiters.slot() as free:
        if bounded and not free:
            with db.session() as session:
                return get_job(session=session, owner_id=owner_id, job_id=job_id), False
        with waiters.watch(job_id) as ended:
            while True:
                with db.session() as session:
                    job = get_job(session=session, owner_id=owner_id, job_id=job_id)
                left = deadline - time.monotonic()
                if job.status in TERMINAL or left <= 0:
                    return job, True
                ended.wait(min(left, 5.0) if waiters.bus.live else min(POLL_S, left))
                if ended.is_set():
                    ended.clear()


def cancel_job(*, session: Session, owner_id: int, job_id: str) -> Job:
    return lifecycle.cancel(session, owner_id=owner_id, job_id=job_id)


