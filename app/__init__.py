"""LLM OS: the HTTP API and the domain shared with workers. Nothing here imports torch."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from app.db import Database
from app.jobs.dispatch import Dispatcher
from app.jobs.intake import Intake
from app.jobs.lifecycle import ENDED
from app.jobs.signals import Streams, Waiters, bus_for
from app.platform import Platform, platform
from app.queue import Publisher, celery_init_app
from app.services.lookups import Lookups
from app.services.result_cache import ResultCache
from app.settings import load_settings


def create_app(config: dict[str, Any] | None = None) -> Flask:
    settings = load_settings(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    celery = celery_init_app(app, settings)
    bus = bus_for(settings.broker_url, settings.data_dir, settings.database_url)
    db = Database(settings.database_url, bus=bus, pool_size=settings.db_pool_size)
    publisher = Publisher(celery, settings.broker_url)
    app.extensions["llmos"] = Platform(settings=settings, db=db, publisher=publisher, bus=bus,
                                       dispatcher=Dispatcher(db, publisher),
                                       waiters=Waiters(bus, ENDED, settings.max_waiting), lookups=Lookups(bus),
                                       streams=Streams(bus, ENDED), result_cache=ResultCache(settings, db),
                                       intake=Intake(db) if db.engine.dialect.name == "postgresql" else None)
    from app.api import init_api
    from app.api.limits import init_limits
    from app.api.ops import init_ops  # request ids, access log, /metrics, /readyz (first: every request gets an id)

    init_ops(app)
    init_api(app)
    init_limits(app)
    logging.getLogger("llmos").setLevel(os.environ.get("LLMOS_LOG_LEVEL", "INFO").upper())
    return app


__all__ = ["Platform", "create_app", "platform"]
