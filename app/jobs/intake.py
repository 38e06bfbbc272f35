"""Group commit for new jobs on PostgreSQL: the hot path of POST /jobs.

A request thread hands its new job to its process's `Intake` and waits. One writer thread takes every job handed
over since its last statement (up to lifecycle.MAX_GROUP) and writes them, with their `queued` events and outbox
rows, in one statement on an autocommit connection (lifecycle.submit_all): one round trip and one commit for the
group. Each request thread then goes on as before: it publishes its own message (app.jobs.dispatch) and answers.

Alone, a request pays two thread hand-offs over writing its row itself. Under load, concurrent requests share
statements and commits, and the API process and PostgreSQL spend less per job (bench/intake.py).

A group whose statement fails is written again one job at a time, so that one bad row (its owner deleted
meanwhile) fails only its own request, each request with its own exception. The writer thread ends after `idle_s`
without work and starts again with the next job, also in a forked child (the parent's thread is not there).
"""

from __future__ import annotations

import os
import threading

from app.db import Database
from app.jobs import lifecycle
from app.models import Job


class _Ticket:
    __slots__ = ("job", "done", "outbox_id", "error")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.done = threading.Event()
        self.outbox_id = 0
        self.error: Exception | None = None


class Intake:
    def __init__(self, db: Database, *, idle_s: float = 5.0) -> None:
        self.db = db
        self.idle_s = idle_s
        self._work = threading.Condition()
        self._pending: list[_Ticket] = []
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.statements = 0  # groups written, counted for tests and benches (a retried group counts again)

    def submit(self, job: Job) -> int:
        """Write `job` queued, with its event and outbox row; return the outbox row's id once committed. Raises
        what writing it raised."""
        ticket = _Ticket(job)
        with self._work:
            if self._pid != os.getpid():
                self._pending, self._thread, self._pid = [], None, os.getpid()
            self._pending.append(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
                self._thread.start()
            else:
                self._work.notify()
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        return ticket.outbox_id

    def _run(self) -> None:
        while True:
            with self._work:
                if not self._pending:
                    self._work.wait(self.idle_s)
                    if not self._pending:
                        self._thread = None
                        return
                group = self._pending[:lifecycle.MAX_GROUP]
                del self._pending[:lifecycle.MAX_GROUP]
            self._write(group)

    def _write(self, group: list[_Ticket]) -> None:
        try:
            self.statements += 1
            ids = self.db.run_statement(lambda conn: lifecycle.submit_all(conn, [t.job for t in group]))
        except Exception as exc:  # noqa: BLE001 - it belongs to the request threads that wait for it
            if len(group) > 1:
                for ticket in group:
                    self._write([ticket])
                return
            group[0].error = exc
            group[0].done.set()
            return
        for ticket, outbox_id in zip(group, ids, strict=True):
            ticket.outbox_id = outbox_id
            ticket.done.set()
