"""gunicorn settings for `llmos api` and `llmos dev` (`-c python:app.gunicorn_conf`): gunicorn's own lines in
the platform's log format (the app logs one line per request itself, with its request id), and the metrics
files of a worker process that exited marked dead (prometheus-client multiprocess mode)."""

from __future__ import annotations

import os
from typing import Any

from app.logging_setup import dict_config, lean_records

logconfig_dict = dict_config()
lean_records()  # in the master, before it forks the workers
accesslog = None  # app.api.ops logs each request (method, path, status, duration, request_id)


def child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
