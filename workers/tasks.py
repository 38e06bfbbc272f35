"""The one Celery task: claim the job (one UPDATE ... RETURNING), run its kind's handler with no session held,
store the outcome through the lifecycle core (one transaction)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from flask import current_app
from sqlalchemy.exc import InterfaceError, OperationalError

from app.jobs import kinds, lifecycle
from app.logging_setup import job_context
from app.queue import RUN_JOB_TASK
from app.services import batches
from workers import metrics
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome
from workers.runtime import WorkerRuntime

log = logging.getLogger("llmos.worker")

TRANSIENT_DB = (OperationalError, InterfaceError)


def runtime() -> WorkerRuntime:
    return current_app.extensions["llmos_worker"]  # type: ignore[no-any-return]


@shared_task(name=RUN_JOB_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=30)
def run_job(self: Any, job_id: str) -> None:
    with job_context(job_id):  # every line logged for this job carries its job_id
        _run_job(self, job_id)


def _run_job(self: Any, job_id: str) -> None:
    rt = runtime()
    rt.took_message()
    if rt.stopping:  # a message that reached a stopping worker (a job it just handed back, say) goes back
        raise Reject("worker stopping", requeue=True)
    limit = rt.platform.settings.max_running_jobs
    over = False

    def take(s: Any) -> lifecycle.Claim | None:
        nonlocal over
        over = limit > 0 and lifecycle.owner_at_quota(s, job_id=job_id, max_running=limit)
        return None if over else lifecycle.claim(s, job_id=job_id, worker_id=rt.worker_id)

    try:
        claim = rt.platform.db.run(take)
    except TRANSIENT_DB as exc:  # database unreachable: try this message again later, bounded
        log.warning("job=%s claim failed (database unavailable), retry %d", job_id, self.request.retries + 1)
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from None
    if over:  # the owner's quota of running jobs is full: the same message again in 2 s, the job stays queued
        log.info("job=%s waits: its owner runs LLMOS_MAX_RUNNING_JOBS jobs already", job_id)
        raise self.retry(countdown=2, max_retries=None)
    if claim is None:
        log.info("job=%s not queued any more (duplicate delivery or cancelled); skipped", job_id)
        return
    attempt = claim.attempt
    metrics.job_claimed(claim)
    t_run, ended, usage = time.monotonic(), "failed", None
    log.info("job=%s state=running kind=%s attempt=%d worker=%s", job_id, claim.kind, attempt, rt.worker_id)
    cancel = rt.job_started(job_id)
    handed_back = False
    try:
        outcome = _run(rt, claim, cancel)
    except JobFailure as exc:
        code, message, also, partial = exc.code, exc.message, exc.also, exc.output
        status = "cancelled" if code == "cancelled" else "failed"
        if code == "cancelled" and rt.handing_back(job_id):
            status = "queued"
            handed_back = _store(rt, lambda s: lifecycle.hand_back(
                s, job_id=job_id, attempt=attempt, reason=f"worker {rt.worker_id} stopping", also=also))
            if handed_back:
                rt.platform.dispatcher.publish_pending([job_id])
            ended = "handed_back"
            log.info("job=%s state=queued handed back (worker stopping)", job_id)
        else:
            _store(rt, lambda s: lifecycle.fail(s, job_id=job_id, attempt=attempt, code=code, message=message,
                                                output=partial, also=also))
            ended = "cancelled" if code == "cancelled" else "failed"
            log.info("job=%s state=%s code=%s", job_id, status, code)
    except Exception as exc:
        code, status = "internal", "failed"
        log.exception("job=%s handler crashed", job_id)
        crash = f"internal error ({exc.__class__.__name__})"
        _store(rt, lambda s: lifecycle.fail(s, job_id=job_id, attempt=attempt, code="internal", message=crash))
    else:
        # nothing to write along (no webhook delivery, no batch, no `also`): the outcome is one statement
        single = not claim.has_webhook and claim.batch_id is None and outcome.also is None
        stored = _store(rt, lambda s: lifecycle.succeed(s, job_id=job_id, attempt=attempt, output=outcome.output,
                                                        usage=outcome.usage, also=outcome.also), single=single)
        code, status = None, "succeeded"
        log.info("job=%s state=succeeded stored=%s", job_id, stored)
        if stored and claim.cache_key is not None:  # the same request from the same owner is answered from here
            rt.platform.result_cache.put(claim.cache_key, owner_id=claim.owner_id, output=outcome.output,
                                         usage=outcome.usage)
        ended, usage = "succeeded", outcome.usage
    finally:
        rt.job_ended(job_id)
        metrics.job_ended(claim, ended, time.monotonic() - t_run, usage)
    if rt.hooks:
        rt.notify({"job_id": job_id, "kind": claim.kind, "status": status, "error_code": code})
    if claim.batch_id is not None and not handed_back:  # the last chunk to end finalises its batch
        batches.finalize(db=rt.platform.db, settings=rt.platform.settings, batch_id=claim.batch_id)


def _run(rt: WorkerRuntime, claim: lifecycle.Claim, cancel: Any) -> Outcome:
    kind = kinds.get(claim.kind)
    if kind is None:
        raise JobFailure("invalid_input", f"this worker knows no job kind {claim.kind!r}")
    model = None
    if claim.model is not None:
        model = rt.model_spec(claim.model)
        if model is None:
            raise JobFailure("model_not_found", f"model {claim.model!r} was removed from the registry")
    attempt = claim.attempt

    def progress(done: int, total: int, message: str | None = None, **metrics: Any) -> None:
        try:
            with rt.platform.db.session() as s:
                lifecycle.progress(s, job_id=claim.id, attempt=attempt, done=done, total=total,
                                   message=message or f"{done}/{total} tokens", **metrics)
        except TRANSIENT_DB:  # progress is best effort; the outcome write is the one that retries
            log.warning("job=%s progress not recorded (database unavailable)", claim.id)

    ctx = JobContext(id=claim.id, kind=claim.kind, model=model, input=claim.input, params=claim.params,
                     timeout_s=claim.timeout_s, started=time.monotonic(), cancel=cancel, progress=progress,
                     attempt=attempt, owner_id=claim.owner_id, batch_id=claim.batch_id)
    handler: Callable[[JobContext, WorkerRuntime], Outcome] = rt.handler(kind.handler)
    return handler(ctx, rt)


def _store(rt: WorkerRuntime, write: Callable[[Any], bool], single: bool = False) -> bool:
    """Write an outcome; while the database is unreachable keep trying (with backoff) for a bounded time.
    The write is compare-and-set, so a late write after the job was handed elsewhere changes nothing.
    `single`: the write is one statement (PostgreSQL), run without a transaction around it."""
    db = rt.platform.db
    single = single and db.engine.dialect.name == "postgresql"
    deadline = time.monotonic() + rt.platform.settings.outcome_write_retry_s
    delay = 0.5
    while True:
        try:
            if single:
                return db.run_statement(write)
            with db.session() as session:
                return write(session)
        except TRANSIENT_DB:
            if time.monotonic() > deadline:
                log.error("giving up storing an outcome; the scheduler will re-run the job")
                raise
            log.warning("database unavailable while storing an outcome; retrying in %.1fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 10)
