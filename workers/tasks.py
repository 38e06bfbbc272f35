"""Thin Celery tasks: claim the job, run its kind's handler with no session held, store the outcome."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from flask import current_app

from app.models import ModelEntry
from app.queue import RUN_JOB_TASK
from app.services import jobs
from workers.errors import JobFailure
from workers.handlers import HANDLERS, JobContext
from workers.model_cache import ModelSpec
from workers.runtime import WorkerRuntime

log = logging.getLogger("llmos.worker")


def runtime() -> WorkerRuntime:
    return current_app.extensions["llmos_worker"]


@shared_task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> None:
    rt = runtime()
    db = rt.platform.db
    with db.session() as session:
        job = jobs.claim_job(session=session, job_id=job_id, worker_id=rt.worker_id)
        if job is None:
            log.info("job=%s not queued any more (duplicate delivery or cancelled); skipped", job_id)
            return
        entry = session.get(ModelEntry, job.model)
        attempt = job.attempts
        cancel = rt.job_started(job_id)
        ctx = None
        if entry is not None:
            ctx = JobContext(
                id=job.id, kind=job.kind,
                model=ModelSpec(entry.name, entry.kind, entry.source_type, entry.source, dict(entry.config)),
                input=dict(job.input), params=dict(job.params), timeout_s=job.timeout_s,
                started=time.monotonic(), cancel=cancel,
            )
    log.info("job=%s state=running attempt=%d worker=%s", job_id, attempt, rt.worker_id)
    try:
        if ctx is None:
            raise JobFailure("model_not_found", "the job's model was removed from the registry")
        handler = HANDLERS.get(ctx.kind)
        if handler is None:
            raise JobFailure("invalid_input", f"this worker has no handler for kind {ctx.kind!r}")
        output, usage = handler(ctx, rt)
    except JobFailure as exc:
        with db.session() as session:
            jobs.fail_job(session=session, job_id=job_id, attempt=attempt, code=exc.code, message=exc.message)
        log.info("job=%s state=%s code=%s", job_id, "cancelled" if exc.code == "cancelled" else "failed",
                 exc.code)
    except Exception as exc:
        log.exception("job=%s handler crashed", job_id)
        with db.session() as session:
            jobs.fail_job(session=session, job_id=job_id, attempt=attempt, code="internal",
                          message=f"internal error ({exc.__class__.__name__})")
    else:
        with db.session() as session:
            stored = jobs.complete_job(session=session, job_id=job_id, attempt=attempt, output=output,
                                       usage=usage)
        log.info("job=%s state=succeeded stored=%s tokens=%s", job_id, stored, usage.get("completion_tokens"))
    finally:
        rt.job_ended(job_id)
