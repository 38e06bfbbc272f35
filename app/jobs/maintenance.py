"""The scheduler's passes over jobs (run by app.services.scheduler; every step is a compare-and-set through
lifecycle.py, so two passes at once change nothing twice):

- recover_lost: `running` / `cancelling` jobs whose worker stopped heart-beating (or never registered) are
  re-queued, failed `worker_lost` when out of attempts, or ended cancelled.
- republish_stranded: `queued` jobs whose message is gone (lost with a broker restart, dropped as an unknown
  task, purged) get a new outbox row: published long enough ago, and their queue holds no message.
- expire_overdue: jobs running well past their time limit (a hung worker that still heart-beats) fail `timeout`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select

from app.db import Database
from app.jobs import lifecycle
from app.jobs.states import ACTIVE, JobStatus
from app.models import Job, Outbox, Worker, utcnow

log = logging.getLogger(__name__)

ACTIVE_STATUSES = tuple(ACTIVE)


@dataclass
class Report:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    republished: int = 0
    expired: int = 0
    batches: set[str] = field(default_factory=set)  # batches one of whose chunks ended here


def dead_workers(*, db: Database, stale_after_s: float) -> tuple[set[str], set[str]]:
    """(dead worker ids, every known worker id)."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with db.session() as session:
        rows = session.execute(select(Worker.id, Worker.last_heartbeat_at, Worker.stopped_at)).all()
    return {wid for wid, last, stopped in rows if stopped is not None or last < cutoff}, {r[0] for r in rows}


def recover_lost(*, db: Database, stale_after_s: float, report: Report | None = None) -> Report:
    report = report or Report()
    dead, known = dead_workers(db=db, stale_after_s=stale_after_s)
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with db.session() as session:
        candidates = session.execute(
            select(Job.id, Job.worker_id, Job.status, Job.attempts, Job.max_attempts, Job.started_at, Job.batch_id)
            .where(Job.status.in_(ACTIVE_STATUSES))
        ).all()
    for job_id, worker_id, status, attempts, max_attempts, started_at, batch_id in candidates:
        orphan = worker_id not in known and started_at is not None and started_at < cutoff
        if worker_id not in dead and not orphan:
            continue
        with db.session() as session:
            what = lifecycle.recover_lost(session, job_id=job_id, status=status, attempt=attempts,
                                          max_attempts=max_attempts, worker_id=worker_id)
        if what is None:
            continue
        setattr(report, what, getattr(report, what) + 1)
        if batch_id is not None and what != "requeued":
            report.batches.add(batch_id)
        log.warning("job=%s worker_lost worker=%s %s attempt=%d", job_id, worker_id, what, attempts)
    return report


def republish_stranded(*, db: Database, queue_depth: Callable[[str], int | None], older_than_s: float,
                       report: Report | None = None, batch: int = 1000) -> Report:
    """Only provably lost messages: a queue with messages is still draining; those jobs are looked at later."""
    report = report or Report()
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
            .where(Job.status == JobStatus.queued, last_pub.c.n == last_pub.c.n_sent,
                   last_pub.c.sent < cutoff)
            .order_by(Job.created_at).limit(batch)
        ).all()
    depth: dict[str, int | None] = {}
    for job_id, queue, priority, _sent in rows:
        if queue not in depth:
            depth[queue] = queue_depth(queue)
        if depth[queue] != 0:  # unknown or non-empty: not provably lost
            continue
        with db.session() as session:
            if lifecycle.republish(session, job_id=job_id, queue=queue, priority=priority,
                                   reason=f"its message was missing from {queue}; published again"):
                report.republished += 1
    if report.republished:
        log.warning("re-published %d stranded job(s)", report.republished)
    return report


def expire_overdue(*, db: Database, grace_s: float, report: Report | None = None) -> Report:
    """Running past started_at + timeout_s + grace_s: the worker should have stopped it by itself."""
    report = report or Report()
    now = utcnow()
    with db.session() as session:
        rows = session.execute(select(Job.id, Job.attempts, Job.started_at, Job.timeout_s, Job.batch_id)
                               .where(Job.status.in_(ACTIVE_STATUSES), Job.started_at.is_not(None))).all()
    for job_id, attempt, started_at, timeout_s, batch_id in rows:
        if started_at is None or started_at + timedelta(seconds=timeout_s + grace_s) > now:
            continue
        with db.session() as session:
            if lifecycle.expire(session, job_id=job_id, attempt=attempt,
                                message=f"still running {timeout_s}s after it started (its time limit); stopped"):
                report.expired += 1
                if batch_id is not None:
                    report.batches.add(batch_id)
    return report
