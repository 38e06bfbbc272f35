"""LLM OS: the HTTP API and the domain shared with workers. Nothing here imports torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from app.db import Database
from app.jobs.dispatch import Dispatcher
from app.jobs.lifecycle import ENDED
from app.jobs.signals import Bus, Waiters, bus_for
from app.queue import Publisher, celery_init_app
from app.services.lookups import Lookups
from app.settings import Settings, load_settings


@dataclass
class Platform:
    """What every request and task needs: settings, the database, the publisher, the dispatcher (outbox fast
    path), the signals bus and the long-poll waiters of this process."""

    settings: Settings
    db: Database
    publisher: Publisher
    bus: Bus
    dispatcher: Dispatcher
    waiters: Waiters
    lookups: Lookups


def create_app(config: dict[str, Any] | None = None) -> Flask:
    settings = load_settings(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    celery = celery_init_app(app, settings)
    bus = bus_for(settings.broker_url, settings.data_dir)
    db = Database(settings.database_url, bus=bus, pool_size=settings.db_pool_size)
    publisher = Publisher(celery, settings.broker_url)
    app.extensions["llmos"] = Platform(settings=settings, db=db, publisher=publisher, bus=bus,
                                       dispatcher=Dispatcher(db, publisher), waiters=Waiters(bus, ENDED),
                                       lookups=Lookups(bus))
    from app.api import init_api

    init_api(app)
    logging.getLogger("llmos").setLevel(logging.INFO)
    return app


def platform() -> Platform:
    return current_app.extensions["llmos"]
