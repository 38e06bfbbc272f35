"""Group commit for new jobs on PostgreSQL: the hot path of POST /jobs.

The request threads of one process that submit at the same time share statements. A thread that finds no write
in flight writes at once: its own job and every job that has been waiting (up to lifecycle.MAX_GROUP), with
their `queued` events and outbox rows, in one statement on an autocommit connection (lifecycle.submit_all): one
round trip and one commit for the group. A thread that arrives while a write is in flight waits for it to end;
then its job is written by the next thread to take the lead, itself or another. So a lone request writes its
own row as it would without this, and under load the requests of a process spend one statement and one commit
per group instead of one each (bench/intake.py). Each request answers only once its own job is committed.

A group whose statement fails is written again one job at a time, so that one bad row (its owner deleted
meanwhile) fails only its own request, each request with its own exception.
"""

from __future__ import annotations

import threading

from app.db import Database
from app.jobs import lifecycle
from app.models import Job


class _Ticket:
    __slots__ = ("job", "done", "outbox_id", "error")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.done = False
        self.outbox_id = 0
        self.error: Exception | None = None


class Intake:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._turn = threading.Condition()
        self._pending: list[_Ticket] = []
        self._writing = False
        self.statements = 0  # groups written, counted for tests and benches (a retried group counts again)

    def submit(self, job: Job) -> int:
        """Write `job` queued, with its event and outbox row; return the outbox row's id once committed. Raises
        what writing it raised."""
        ticket = _Ticket(job)
        with self._turn:
            self._pending.append(ticket)
        while True:
            with self._turn:
                while self._writing and not ticket.done:
                    self._turn.wait()
                if ticket.done:
                    break
                self._writing = True  # this thread leads: it writes what has waited longest, its own job too
                group = self._pending[:lifecycle.MAX_GROUP]
                del self._pending[:lifecycle.MAX_GROUP]
            try:
                self._write(group)
            finally:
                with self._turn:
                    for t in group:
                        if not t.done:  # the leader was interrupted (BaseException): nobody else would write it
                            t.error, t.done = RuntimeError("the request writing this job stopped"), True
                    self._writing = False
                    self._turn.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.outbox_id

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
            group[0].done = True
            return
        for ticket, outbox_id in zip(group, ids, strict=True):
            ticket.outbox_id = outbox_id
            ticket.done = True
