"""LLM OS: the HTTP API and the domain shared with workers. Nothing here imports torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from app.db import Database
from app.queue import Publisher, celery_init_app
from app.settings import Settings, load_settings


@dataclass
class Platform:
    """What every request and task needs: settings, the database and the publisher."""

    settings: Settings
    db: Database
    publisher: Publisher


def create_app(config: dict[str, Any] | None = None) -> Flask:
    settings = load_settings(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    celery = celery_init_app(app, settings)
    app.extensions["llmos"] = Platform(
        settings=settings, db=Database(settings.database_url), publisher=Publisher(celery, settings.broker_url)
    )
    from app.api import init_api

    init_api(app)
    logging.getLogger("llmos").setLevel(logging.INFO)
    return app


def platform() -> Platform:
    return current_app.extensions["llmos"]
