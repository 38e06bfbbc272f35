"""The scheduler: one process (`llmos scheduler`; `llmos dev` runs it in-process) that does everything a
worker should not: the outbox relay, the reconciler (lost workers, stranded messages), time limits, batch
finalisation left undone, and due webhook deliveries. Workers only run jobs and heart-beat.

Two schedulers at once are safe: only the one holding the leader lock works (a PostgreSQL advisory lock on a
connection of its own, released by the server if the process dies; a file lock on the embedded default); the
other waits and takes over. Every step is a compare-and-set anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text

from app.db import Database
from app.jobs import dispatch, maintenance
from app.services import batches, webhooks
from app.services.openai import batches as openai_batches
from app.settings import Settings

log = logging.getLogger("llmos.scheduler")


class Leadership:
    """Held by at most one scheduler at a time."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._conn: Any = None
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        if self.held():
            return True
        if self.db.engine.dialect.name == "postgresql":
            conn = self.db.engine.connect()
            try:
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.settings.scheduler_lock_id}
                                   ).scalar()
                conn.commit()
            except Exception:
                conn.close()
                raise
            if got:
                self._conn = conn
                return True
            conn.close()
            return False
        path = Path(self.settings.data_dir) / "scheduler.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._file = fh
        return True

    def held(self) -> bool:
        if self._file is not None:
            return True
        if self._conn is None:
            return False
        try:  # the lock lives as long as its connection
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:  # noqa: BLE001 - the connection (and so the lock) is gone; try to take it again
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            return False

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.close()
            self._file = None


class Scheduler:
    def __init__(self, *, db: Database, settings: Settings, publisher: dispatch.Publishes,
                 queue_depth: Callable[[str], int | None]) -> None:
        self.db = db
        self.settings = settings
        self.publisher = publisher
        self.queue_depth = queue_depth
        self.leadership = Leadership(db, settings)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="webhook")
        self._threads: list[threading.Thread] = []

    # ---- the passes (each can be called on its own: tests, `llmos scheduler --once`) ----------------------

    def relay(self) -> int:
        return dispatch.relay(db=self.db, publisher=self.publisher)

    def reconcile(self) -> maintenance.Report:
        s = self.settings
        report = maintenance.recover_lost(db=self.db, stale_after_s=s.worker_lost_after_s)
        maintenance.republish_stranded(db=self.db, queue_depth=self.queue_depth, older_than_s=s.republish_after_s,
                                       report=report)
        maintenance.expire_overdue(db=self.db, grace_s=s.worker_lost_after_s, report=report)
        for batch_id in report.batches:
            batches.finalize(db=self.db, settings=s, batch_id=batch_id)
        batches.finalize_pending(db=self.db, settings=s)
        openai_batches.expire_overdue(db=self.db, settings=s)
        return report

    def send_webhooks(self) -> int:
        return webhooks.sweep(db=self.db, settings=self.settings, pool=self._pool)

    def once(self) -> maintenance.Report:
        self.relay()
        report = self.reconcile()
        self.send_webhooks()
        return report

    # ---- the loop ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in background threads (llmos dev, tests); `stop` ends them."""
        t = threading.Thread(target=self.run, name="scheduler", daemon=True)
        t.start()
        self._threads.append(t)

    def run(self) -> None:
        s = self.settings
        loops: list[tuple[str, float, Callable[[], object]]] = [
            ("relay", s.relay_interval_s, self.relay),
            ("reconcile", s.reconcile_interval_s, self.reconcile),
            ("webhooks", s.webhook_sweep_interval_s, self.send_webhooks),
        ]
        due = {name: 0.0 for name, _, _ in loops}
        announced = False
        while not self._stop.is_set():
            try:
                leader = self.leadership.acquire()
            except Exception as exc:  # noqa: BLE001 - database down: try again
                log.warning("scheduler cannot reach the database (%s)", exc.__class__.__name__)
                leader = False
            if not leader:
                if announced:
                    log.warning("scheduler lost the leader lock; standing by")
                announced = False
                self._stop.wait(2.0)
                continue
            if not announced:
                log.info("scheduler active (leader lock held)")
                announced = True
            now = time.monotonic()
            for name, interval, fn in loops:
                if now >= due[name]:
                    due[name] = now + interval
                    try:
                        fn()
                    except Exception:  # noqa: BLE001 - a pass must outlive a database or broker blip
                        log.exception("scheduler %s pass failed", name)
            self._stop.wait(max(0.05, min(due.values()) - time.monotonic()))
        self.leadership.release()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.leadership.release()
