"""What every request and task of a process shares (built once by app.create_app)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from app.db import Database
from app.jobs.dispatch import Dispatcher
from app.jobs.intake import Intake
from app.jobs.signals import Bus, Streams, Waiters
from app.queue import Publisher
from app.services.lookups import Lookups
from app.services.result_cache import ResultCache
from app.settings import Settings


@dataclass
class Platform:
    """What every request and task needs: settings, the database, the publisher, the dispatcher (outbox fast
    path), the signals bus, the long-poll waiters and
    the token streams of this process."""

    settings: Settings
    db: Database
    publisher: Publisher
    bus: Bus
    dispatcher: Dispatcher
    waiters: Waiters
    lookups: Lookups
    streams: Streams  # text of streaming jobs on its way from the workers to this process's clients
    result_cache: ResultCache
    intake: Intake | None = None  # group commit of new jobs (PostgreSQL only)


def platform() -> Platform:
    """The Platform of the current Flask app (inside a request or a worker's task)."""
    return current_app.extensions["llmos"]
