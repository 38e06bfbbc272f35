"""Transactional outbox: a job's message is written with the job and published after commit.

`publish_for_jobs` runs right after the API commits (the fast path); `relay` sweeps whatever that missed
(broker down, process died between commit and publish). A duplicate publish is harmless: a worker claims
a job only from `queued` (compare-and-set), so a second message for it does nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select, update

from app.db import Database
from app.models import Job, JobStatus, Outbox, utcnow

log = logging.getLogger(__name__)


class Publishes(Protocol):
    def publish(self, *, job_id: str, queue: str, priority: int) -> None: ...


def _send(db: Database, publisher: Publishes, rows: list[Outbox]) -> int:
    sent = 0
    for row in rows:
        try:
            publisher.publish(job_id=row.job_id, queue=row.queue, priority=row.priority)
        except Exception as exc:  # broker down: the relay retries later; the job is safe in the database
            log.warning("job=%s outbox publish failed, left for the relay: %s", row.job_id, exc)
            break
        with db.session() as session:
            session.execute(update(Outbox).where(Outbox.id == row.id).values(sent_at=utcnow()))
        sent += 1
    return sent


def publish_new(*, db: Database, publisher: Publishes, job_id: str, queue: str, priority: int) -> bool:
    """The fast path right after the API's commit: publish, then mark the job's outbox row sent."""
    try:
        publisher.publish(job_id=job_id, queue=queue, priority=priority)
    except Exception as exc:  # broker down: the relay retries later; the job is safe in the database
        log.warning("job=%s outbox publish failed, left for the relay: %s", job_id, exc)
        return False
    with db.session() as session:
        session.execute(update(Outbox).where(Outbox.job_id == job_id, Outbox.sent_at.is_(None))
                        .values(sent_at=utcnow()))
    return True


def publish_for_jobs(*, db: Database, publisher: Publishes, job_ids: list[str]) -> int:
    with db.session() as session:
        rows = list(session.scalars(
            select(Outbox).where(Outbox.job_id.in_(job_ids), Outbox.sent_at.is_(None)).order_by(Outbox.id)
        ))
    return _send(db, publisher, rows)


def relay(*, db: Database, publisher: Publishes, older_than_s: float = 2.0, batch: int = 500) -> int:
    """Publish unsent outbox rows older than `older_than_s` (younger ones belong to the fast path).
    Rows of jobs no longer queued (cancelled meanwhile) are marked sent without publishing."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as session:
        rows = list(session.scalars(
            select(Outbox).where(Outbox.sent_at.is_(None), Outbox.created_at < cutoff)
            .order_by(Outbox.id).limit(batch)
        ))
        done = [r.id for r in rows if (session.get(Job, r.job_id) or Job()).status != JobStatus.queued.value]
        if done:
            session.execute(update(Outbox).where(Outbox.id.in_(done)).values(sent_at=utcnow()))
    pending = [r for r in rows if r.id not in set(done)]
    sent = _send(db, publisher, pending)
    if sent:
        log.info("outbox relay published %d message(s)", sent)
    return sent
