"""The reconciler: the database is the truth, the broker only a hint.

- A `running` (or `cancelling`) job whose worker stopped heart-beating is handed back: re-queued with an
  event `worker_lost` and a new outbox row, or failed with `worker_lost` once it has used its attempts.
- A `queued` job whose message is gone (lost with a broker restart, dropped as an unknown task, purged) is
  published again: when it has waited longer than a threshold since its last publish and its queue holds no
  message at all. A duplicate publish is harmless: claiming is compare-and-set on `queued`.

Every step is a compare-and-set, so several reconcilers (one per worker) may run at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from app.db import Database
from app.models import Job, JobStatus, Outbox, Worker, utcnow
from app.services import webhooks
from app.services.jobs import ACTIVE, add_event

log = logging.getLogger(__name__)


@dataclass
class Report:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    republished: int = 0


def _naive_safe(ts: datetime, like: datetime) -> datetime:
    return ts.replace(tzinfo=None) if like.tzinfo is None else ts


def dead_workers(*, db: Database, stale_after_s: float) -> set[str]:
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with db.session() as session:
        rows = session.execute(select(Worker.id, Worker.last_heartbeat_at, Worker.stopped_at)).all()
    return {wid for wid, last, stopped in rows if stopped is not None or last < _naive_safe(cutoff, last)}


def recover_lost_jobs(*, db: Database, stale_after_s: float, alive: frozenset[str] = frozenset()) -> Report:
    """Hand back the jobs of workers that stopped heart-beating (or never registered)."""
    report = Report()
    dead = dead_workers(db=db, stale_after_s=stale_after_s) - alive
    with db.session() as session:
        known = set(session.scalars(select(Worker.id)))
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        candidates = session.execute(
            select(Job.id, Job.worker_id, Job.status, Job.attempts, Job.max_attempts, Job.started_at)
            .where(Job.status.in_(ACTIVE))
        ).all()
    for job_id, worker_id, status, attempts, max_attempts, started_at in candidates:
        orphan = (worker_id not in known and worker_id not in alive and started_at is not None
                  and started_at < _naive_safe(cutoff, started_at))
        if worker_id not in dead and not orphan:
            continue
        with db.session() as session:
            guard = (Job.id == job_id, Job.status == status, Job.attempts == attempts)
            msg = f"worker {worker_id} stopped heart-beating during attempt {attempts}"
            if status == JobStatus.cancelling.value:
                res = session.execute(update(Job).where(*guard).values(
                    status=JobStatus.cancelled.value, finished_at=utcnow(), error_code="cancelled",
                    error_message="cancelled (its worker was lost while stopping)"))
                if res.rowcount:
                    add_event(session, job_id, "worker_lost", msg, worker_id=worker_id, attempt=attempts)
                    add_event(session, job_id, "cancelled", "cancelled", code="cancelled")
                    webhooks.job_event(session, job_id, "job.cancelled")
                    report.cancelled += 1
            elif attempts >= max_attempts:
                res = session.execute(update(Job).where(*guard).values(
                    status=JobStatus.failed.value, finished_at=utcnow(), error_code="worker_lost",
                    error_message=f"{msg}; no attempts left ({attempts}/{max_attempts})"))
                if res.rowcount:
                    add_event(session, job_id, "worker_lost", msg, worker_id=worker_id, attempt=attempts)
                    add_event(session, job_id, "failed", "no attempts left", code="worker_lost")
                    webhooks.job_event(session, job_id, "job.failed")
                    report.failed += 1
            else:
                job = session.get(Job, job_id)
                res = session.execute(update(Job).where(*guard).values(
                    status=JobStatus.queued.value, worker_id=None, started_at=None))
                if res.rowcount and job is not None:
                    add_event(session, job_id, "worker_lost", msg, worker_id=worker_id, attempt=attempts)
                    add_event(session, job_id, "retry", f"re-queued for attempt {attempts + 1}",
                              attempt=attempts + 1, queue=job.queue)
                    session.add(Outbox(job_id=job_id, queue=job.queue, priority=job.priority))
                    report.requeued += 1
                    log.warning("job=%s worker_lost worker=%s re-queued attempt=%d", job_id, worker_id,
                                attempts + 1)
    return report


def republish_stranded(
    *, db: Database, queue_depth: Callable[[str], int | None], older_than_s: float, batch: int = 1000,
) -> int:
    """Re-publish queued jobs whose message is gone: published more than `older_than_s` ago and sitting in a
    queue that holds nothing (a queue with messages is still draining; those jobs are looked at later)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as session:
        last_pub = (
            select(Outbox.job_id, func.max(Outbox.sent_at).label("sent"), func.count().label("n"),
                   func.count(Outbox.sent_at).label("n_sent"))
            .group_by(Outbox.job_id).subquery()
        )
        rows = session.execute(
            select(Job.id, Job.queue, Job.priority, last_pub.c.sent)
            .join(last_pub, last_pub.c.job_id == Job.id)
            .where(Job.status == JobStatus.queued.value, last_pub.c.n == last_pub.c.n_sent)
            .order_by(Job.created_at).limit(batch)
        ).all()
    stranded = [(jid, q, p) for jid, q, p, sent in rows if sent is not None and sent < _naive_safe(cutoff, sent)]
    depth: dict[str, int | None] = {}
    count = 0
    with db.session() as session:
        for job_id, queue, priority in stranded:
            if queue not in depth:
                depth[queue] = queue_depth(queue)
            if depth[queue] != 0:  # unknown or non-empty: not provably lost
                continue
            session.add(Outbox(job_id=job_id, queue=queue, priority=priority))
            add_event(session, job_id, "republished", f"its message was missing from {queue}; published again")
            count += 1
    if count:
        log.warning("reconciler re-published %d stranded job(s)", count)
    return count
