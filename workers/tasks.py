"""Thin Celery tasks: claim the job, run its kind's handler with no session held, store the outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from flask import current_app
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.queue import RUN_JOB_TASK
from app.services import finetunes, jobs, outbox
from workers.errors import JobFailure
from workers.handlers import HANDLERS, JobContext
from workers.model_cache import spec_for
from workers.runtime import WorkerRuntime

log = logging.getLogger("llmos.worker")

TRANSIENT_DB = (OperationalError, InterfaceError)


def runtime() -> WorkerRuntime:
    return current_app.extensions["llmos_worker"]


@shared_task(name=RUN_JOB_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=30)
def run_job(self: Any, job_id: str) -> None:
    rt = runtime()
    try:
        claimed = _claim(rt, job_id)
    except TRANSIENT_DB as exc:  # database unreachable: try this message again later, bounded
        log.warning("job=%s claim failed (database unavailable), retry %d", job_id, self.request.retries + 1)
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30)) from None
    if claimed is None:
        log.info("job=%s not queued any more (duplicate delivery or cancelled); skipped", job_id)
        return
    ctx, attempt = claimed
    log.info("job=%s state=running attempt=%d worker=%s", job_id, attempt, rt.worker_id)
    try:
        if ctx.model is None:
            raise JobFailure("model_not_found", "the job's model was removed from the registry")
        handler = HANDLERS.get(ctx.kind)
        if handler is None:
            raise JobFailure("invalid_input", f"this worker has no handler for kind {ctx.kind!r}")
        output, usage = handler(ctx, rt)
    except JobFailure as exc:
        code, message = exc.code, exc.message
        if code == "cancelled" and rt.handing_back(job_id):
            _store(rt, lambda s: jobs.hand_back(session=s, job_id=job_id, attempt=attempt,
                                                reason=f"worker {rt.worker_id} stopping"))
            outbox.publish_for_jobs(db=rt.platform.db, publisher=rt.platform.publisher, job_ids=[job_id])
            log.info("job=%s state=queued handed back (worker stopping)", job_id)
        else:
            _store(rt, lambda s: jobs.fail_job(session=s, job_id=job_id, attempt=attempt, code=code,
                                               message=message))
            log.info("job=%s state=%s code=%s", job_id, "cancelled" if code == "cancelled" else "failed", code)
    except Exception as exc:
        log.exception("job=%s handler crashed", job_id)
        crash = f"internal error ({exc.__class__.__name__})"
        _store(rt, lambda s: jobs.fail_job(session=s, job_id=job_id, attempt=attempt, code="internal",
                                           message=crash))
    else:
        stored = _store(rt, _completion(rt, ctx, attempt, output, usage))
        log.info("job=%s state=succeeded stored=%s tokens=%s", job_id, stored,
                 usage.get("completion_tokens", usage.get("trained_tokens")))
    finally:
        rt.job_ended(job_id)


def _claim(rt: WorkerRuntime, job_id: str) -> tuple[JobContext, int] | None:
    with rt.platform.db.session() as session:
        job = jobs.claim_job(session=session, job_id=job_id, worker_id=rt.worker_id)
        if job is None:
            return None
        spec = spec_for(session, job.model)
        attempt = job.attempts

        def progress(done: int, total: int, message: str | None = None, **metrics: Any) -> None:
            try:
                with rt.platform.db.session() as s:
                    jobs.record_progress(session=s, job_id=job_id, attempt=attempt, done=done, total=total,
                                         message=message or f"{done}/{total} tokens", **metrics)
            except TRANSIENT_DB:  # progress is best effort; the outcome write is the one that retries
                log.warning("job=%s progress not recorded (database unavailable)", job_id)

        ctx = JobContext(id=job.id, kind=job.kind, model=spec, input=dict(job.input), params=dict(job.params),
                         timeout_s=job.timeout_s, started=time.monotonic(), cancel=rt.job_started(job_id),
                         progress=progress, attempt=attempt)
        return ctx, attempt


def _completion(rt: WorkerRuntime, ctx: JobContext, attempt: int, output: dict[str, Any],
                usage: dict[str, Any]) -> Callable[[Session], bool]:
    """The outcome write of a success: a fine-tuning job also registers its model in the same transaction."""
    if ctx.kind == "finetune":
        adapter = str(finetunes.job_dir(rt.platform.settings, ctx.id) / "adapter")
        return lambda s: finetunes.complete_finetune(session=s, job_id=ctx.id, attempt=attempt, output=output,
                                                     usage=usage, adapter_path=adapter)
    return lambda s: jobs.complete_job(session=s, job_id=ctx.id, attempt=attempt, output=output, usage=usage)


def _store(rt: WorkerRuntime, write: Callable[[Session], bool]) -> bool:
    """Write an outcome; while the database is unreachable keep trying (with backoff) for a bounded time.
    The write is compare-and-set, so a late write after the job was handed elsewhere changes nothing."""
    deadline = time.monotonic() + rt.platform.settings.outcome_write_retry_s
    delay = 0.5
    while True:
        try:
            with rt.platform.db.session() as session:
                return write(session)
        except TRANSIENT_DB:
            if time.monotonic() > deadline:
                log.error("giving up storing an outcome; the reconciler will re-run the job")
                raise
            log.warning("database unavailable while storing an outcome; retrying in %.1fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 10)
