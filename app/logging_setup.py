"""Logging for every process: one JSON object per line (production) or one readable line (`llmos dev`), each
carrying the `request_id` of the HTTP request or the `job_id` of the job it was written for.

Nothing happens at import: the commands call `configure` (the API through `app.gunicorn_conf`, the worker
through Celery's `setup_logging` signal, the scheduler and `llmos dev` directly). Tests leave logging alone.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmos_request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("llmos_job_id", default=None)

# LogRecord attributes that are not `extra=` fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_CONTEXT = ("request_id", "job_id")

# Libraries whose INFO lines say nothing an operator acts on (per-message Celery chatter, HTTP client lines).
QUIET = {"celery": logging.WARNING, "kombu": logging.WARNING, "kombu.connection": logging.ERROR,
         "amqp": logging.WARNING, "urllib3": logging.WARNING,
         "httpx": logging.WARNING, "transformers": logging.ERROR, "huggingface_hub": logging.ERROR,
         "filelock": logging.WARNING, "werkzeug": logging.WARNING, "alembic": logging.WARNING,
         "gunicorn.access": logging.WARNING}


class ContextFilter(logging.Filter):
    """Adds request_id and job_id (from the context variables) to every record that does not carry its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", request_id), ("job_id", job_id)):
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", "request_id"?, "job_id"?, "exc"?, ...extra} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _CONTEXT and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`12:00:01 INFO  llmos.api  message  job=job_… req=…` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{clock} {record.levelname:<5} {record.name:<16} {record.getMessage()}"
        tags = [f"{k}={v}" for k, v in (("job", getattr(record, "job_id", None)),
                                         ("req", getattr(record, "request_id", None))) if v]
        extra = {k: v for k, v in vars(record).items()
                 if k not in _STANDARD and k not in _CONTEXT and not k.startswith("_")}
        tags += [f"{k}={v}" for k, v in extra.items()]
        if tags:
            line += "  " + " ".join(tags)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_format(default: str | None = None) -> str:
    """LLMOS_LOG_FORMAT (json | text); otherwise `default`, or json in production and text elsewhere."""
    fmt = os.environ.get("LLMOS_LOG_FORMAT") or default
    if not fmt:
        fmt = "json" if os.environ.get("LLMOS_ENV") == "production" else "text"
    if fmt not in ("json", "text"):
        raise ValueError("LLMOS_LOG_FORMAT must be json or text")
    return fmt


def dict_config(fmt: str | None = None, level: str | None = None) -> dict[str, Any]:
    """A logging.config dictionary: one stderr handler on the root logger with the chosen format."""
    fmt = log_format(fmt)
    level = (level or os.environ.get("LLMOS_LOG_LEVEL") or "INFO").upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"llmos": {"()": JsonFormatter if fmt == "json" else TextFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "llmos", "filters": ["context"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": lvl} for name, lvl in QUIET.items()},
            "llmos": {"level": level}, "app": {"level": level}, "workers": {"level": level},
            # gunicorn's own lines through the same handler, in the same format
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
        },
    }


def lean_records() -> None:
    """Records without what no formatter here writes: the caller's file, line and function (found by walking the
    stack on every call), the thread's and the process's names and ids. The settings of the logging HOWTO's
    "Optimization" section; a record costs half as much (the API logs a line per request)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure(fmt: str | None = None, level: str | None = None) -> None:
    """Install the handler (idempotent: a second call replaces the first)."""
    lean_records()
    logging.config.dictConfig(dict_config(fmt, level))
    logging.captureWarnings(True)
    for name in QUIET:
        logging.getLogger(name).setLevel(QUIET[name])
    if sys.stderr.isatty() is False:
        os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars as log lines
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@contextmanager
def job_context(value: str) -> Iterator[None]:
    """Every line logged inside (in this thread) carries job_id=value."""
    token = job_id.set(value)
    try:
        yield
    finally:
        job_id.reset(token)
