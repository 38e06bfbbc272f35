"""Worker entry point: build the Flask app and Celery app, attach the runtime, consume the queues."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from celery.signals import setup_logging, worker_ready, worker_shutdown, worker_shutting_down

from app import create_app, logging_setup
from app.jobs import kinds
from app.queue import make_queue, worker_queues
from workers import hardware

log = logging.getLogger("llmos.worker")


def run_worker(*, gpu_type: str | None = None, queues: list[str] | None = None,
               concurrency: int | None = None, loglevel: str = "INFO", config: dict[str, Any] | None = None) -> None:
    flask_app = create_app(config)
    platform = flask_app.extensions["llmos"]
    settings = platform.settings
    hw = hardware.detect(gpu_type or settings.gpu_type, settings.device)
    queues = queues or worker_queues(kinds.queue_families(), hw.gpu_type)

    import workers.tasks  # noqa: F401 - registers the task
    from workers.runtime import WorkerRuntime

    rt = WorkerRuntime.create(platform, hw, queues)
    flask_app.extensions["llmos_worker"] = rt
    celery = flask_app.extensions["celery"]
    celery.conf.task_queues = [make_queue(q) for q in queues]

    def _ready(**_: Any) -> None:
        rt.start()
        from workers import metrics

        metrics.start(rt, settings.worker_metrics_port or 0)
        log.info("worker %s ready: gpu=%s device=%s queues=%s", rt.worker_id, hw.gpu_type, hw.device, queues)

    def _shutdown(**_: Any) -> None:
        rt.stop()

    def _shutting_down(**_: Any) -> None:
        rt.begin_shutdown()

    def _logging(**_: Any) -> None:  # connected: Celery leaves logging to us (one format for every line)
        logging_setup.configure(level=os.environ.get("LLMOS_LOG_LEVEL") or loglevel)

    setup_logging.connect(_logging, weak=False)
    worker_ready.connect(_ready, weak=False)
    worker_shutting_down.connect(_shutting_down, weak=False)
    worker_shutdown.connect(_shutdown, weak=False)
    argv = [
        "worker", "--pool=threads", f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={','.join(queues)}", f"--hostname={rt.worker_id}", f"--loglevel={loglevel}",
        "--without-gossip", "--without-mingle",
    ]
    if settings.broker_url.startswith("filesystem"):
        argv.append("--without-heartbeat")  # event heartbeats need a fanout exchange: Flower is for Redis/AMQP
    if os.environ.get("LLMOS_DEV") == "1":  # started by `llmos dev`: no banner, no root warning on a laptop
        from celery.apps.worker import Worker
        from celery.exceptions import SecurityWarning

        Worker.emit_banner = lambda self: None  # type: ignore[method-assign]  # `celery --quiet` is not in argv's reach
        warnings.filterwarnings("ignore", category=SecurityWarning)
    celery.worker_main(argv)
