"""Outbox -> broker. A job's outbox row commits with the job; the message is published after the commit.

- `Dispatcher.publish` is the fast path right after a commit (the API's submit, a worker's hand-back). The rows
  it sent are marked in one UPDATE per flush (every `flush_interval_s`, from a background thread), not in a
  second transaction per request.
- `relay` (the scheduler) publishes rows the fast path missed: the broker was down, the process died between
  commit and publish, or a transition added a row (re-queue after a lost worker, republish).
A duplicate publish is harmless: a worker claims only a `queued` job (compare-and-set).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select, update

from app.db import Database
from app.jobs.states import JobStatus
from app.models import Job, Outbox, utcnow

log = logging.getLogger(__name__)

Row = tuple[int, str, str, int]  # outbox id, job id, queue, priority


class Publishes(Protocol):
    def publish(self, *, job_id: str, queue: str, priority: int) -> None: ...


def _send(publisher: Publishes, rows: Iterable[Row]) -> list[int]:
    sent: list[int] = []
    for outbox_id, job_id, queue, priority in rows:
        try:
            publisher.publish(job_id=job_id, queue=queue, priority=priority)
        except Exception as exc:  # noqa: BLE001 - broker down: the relay retries; the job is safe in the database
            log.warning("job=%s publish failed, left for the relay: %s", job_id, exc)
            break
        sent.append(outbox_id)
    return sent


def mark_sent(db: Database, ids: list[int]) -> None:
    now = utcnow()
    with db.session() as session:
        for start in range(0, len(ids), 1000):
            session.execute(update(Outbox).where(Outbox.id.in_(ids[start:start + 1000])).values(sent_at=now),
                            execution_options={"synchronize_session": False})


class Dispatcher:
    def __init__(self, db: Database, publisher: Publishes, flush_interval_s: float = 0.2) -> None:
        self.db = db
        self.publisher = publisher
        self.flush_interval_s = flush_interval_s
        self._sent: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, rows: Iterable[Row]) -> int:
        sent = _send(self.publisher, rows)
        if sent:
            with self._lock:
                self._sent.extend(sent)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="outbox-mark", daemon=True)
                    self._thread.start()
        return len(sent)

    def publish_pending(self, job_ids: list[str]) -> int:
        """Publish the unsent rows of these jobs now (after a hand-back)."""
        with self.db.session() as session:
            rows = session.execute(select(Outbox.id, Outbox.job_id, Outbox.queue, Outbox.priority)
                                   .where(Outbox.job_id.in_(job_ids), Outbox.sent_at.is_(None))
                                   .order_by(Outbox.id)).all()
        n = self.publish([tuple(r) for r in rows])  # type: ignore[misc]
        self.flush()
        return n

    def flush(self) -> None:
        with self._lock:
            ids, self._sent = self._sent, []
        if not ids:
            return
        try:
            mark_sent(self.db, ids)
        except Exception as exc:  # noqa: BLE001 - unmarked rows are published again by the relay: harmless
            log.warning("could not mark %d outbox row(s) sent: %s", len(ids), exc.__class__.__name__)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self.flush()


def relay(*, db: Database, publisher: Publishes, older_than_s: float = 2.0, batch: int = 1000) -> int:
    """Publish unsent outbox rows older than `older_than_s` (younger ones belong to the fast path). Rows of jobs
    no longer queued (cancelled meanwhile) are marked sent without publishing."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as session:
        rows = session.execute(
            select(Outbox.id, Outbox.job_id, Outbox.queue, Outbox.priority, Job.status)
            .join(Job, Job.id == Outbox.job_id)
            .where(Outbox.sent_at.is_(None), Outbox.created_at < cutoff)
            .order_by(Outbox.id).limit(batch)
        ).all()
    stale = [r[0] for r in rows if r[4] != JobStatus.queued]
    pending = [(r[0], r[1], r[2], r[3]) for r in rows if r[4] == JobStatus.queued]
    sent = _send(publisher, pending)
    if stale or sent:
        mark_sent(db, stale + sent)
    if sent:
        log.info("outbox relay published %d message(s)", len(sent))
    return len(sent)
