"""What a running worker process holds: identity, hardware, model cache, and its two background loops (heartbeat
into the database; cancels, heard through the signals bus with a slow database poll as the fallback). The relay,
reconciler, time limits and webhooks belong to the scheduler (app.services.scheduler)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app import plugins
from app.jobs import kinds, lifecycle
from app.jobs.lifecycle import CANCEL, INVALIDATE
from app.jobs.states import JobStatus
from app.models import utcnow
from app.platform import Platform
from app.services import workers
from app.services.lookups import TTLCache
from workers import loaders
from workers.hardware import GIB, Hardware
from workers.model_cache import ModelCache, ModelSpec, spec_for

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    platform: Platform
    hardware: Hardware
    worker_id: str
    queues: list[str]
    cache: ModelCache
    running: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    last_task_at: object = None
    _handing_back: set[str] = field(default_factory=set)
    stopping: bool = False  # SIGTERM received: no new job starts here (a message that still arrives goes back)
    _specs: TTLCache[ModelSpec | None] = field(default_factory=lambda: TTLCache(10.0))
    _handlers: dict[str, Any] = field(default_factory=dict)
    training_slot: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))
    hooks: list[plugins.Plugin] = field(default_factory=list)  # llmos.hooks entry points that loaded

    @classmethod
    def create(cls, platform: Platform, hardware: Hardware, queues: list[str]) -> WorkerRuntime:
        s = platform.settings
        budget = s.model_cache_bytes
        if budget is None:
            total = hardware.memory_total_bytes
            budget = int(total * 0.9) if hardware.device == "cuda" and total else 8 * GIB
        cache = ModelCache(model_dir=s.model_dir, device=hardware.device, budget_bytes=budget,
                           max_batch=s.worker_max_batch)
        worker_id = f"llmos-{hardware.gpu_type}-{os.getpid()}@{socket.gethostname()}"
        for p in plugins.discover("llmos.loaders"):
            if p.error is None:
                try:
                    loaders.add_loader(p.name, p.obj() if isinstance(p.obj, type) else p.obj)
                except Exception as exc:  # a broken plugin never stops the worker
                    plugins.skip(p, f"{exc.__class__.__name__}: {exc}")
        hooks = [p for p in plugins.discover("llmos.hooks") if p.error is None]
        return cls(platform=platform, hardware=hardware, worker_id=worker_id, queues=queues, cache=cache,
                   training_slot=threading.Semaphore(s.finetune_concurrency), hooks=hooks)

    # ---- running jobs ------------------------------------------------------------------------------------

    def job_started(self, job_id: str) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self.running[job_id] = ev
            self.last_task_at = utcnow()
        return ev

    def job_ended(self, job_id: str) -> None:
        with self._lock:
            self.running.pop(job_id, None)
            self._handing_back.discard(job_id)

    def notify(self, event: dict[str, Any]) -> None:
        """Tell the installed hooks that a job this worker ran has ended; a hook that raises is logged."""
        for hook in self.hooks:
            try:
                hook.obj(event)
            except Exception:
                log.exception("job=%s hook %s (%s) failed", event.get("job_id"), hook.name, hook.value)

    def handing_back(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._handing_back

    def begin_shutdown(self) -> None:
        """SIGTERM: running jobs get a grace period to finish; what is still running then goes back to the
        queue (stopped between steps, handed back by the task), so a deploy never loses or strands a job."""
        grace = self.platform.settings.shutdown_grace_s
        self.stopping = True

        def _after_grace() -> None:
            with self._lock:
                for job_id, ev in self.running.items():
                    self._handing_back.add(job_id)
                    ev.set()
                n = len(self.running)
            if n:
                log.warning("shutdown grace of %.0fs over: handing %d running job(s) back", grace, n)

        log.info("stopping: %d running job(s) have %.0fs to finish", len(self.running), grace)
        t = threading.Timer(grace, _after_grace)
        t.daemon = True
        t.start()

    # ---- what a task looks up -----------------------------------------------------------------------------

    def model_spec(self, name: str) -> ModelSpec | None:
        """The registry entry a job names, cached briefly (dropped everywhere when the model changes)."""

        def load() -> ModelSpec | None:
            with self.platform.db.session() as session:
                return spec_for(session, name)

        return self._specs.get(name, load)

    def handler(self, path: str) -> Any:
        fn = self._handlers.get(path)
        if fn is None:
            fn = self._handlers[path] = kinds.load(path)
        return fn

    def took_message(self) -> None:
        self.last_task_at = utcnow()

    # ---- background loops: the heartbeat and cancels; nothing else runs on a worker -------------------------

    def start(self) -> None:
        self.heartbeat()
        s = self.platform.settings
        bus = self.platform.bus
        bus.subscribe(CANCEL, self._cancel)
        bus.subscribe(INVALIDATE, self._invalidate)
        for name, interval, fn in (
            ("heartbeat", s.heartbeat_interval_s, self.heartbeat),
            ("cancel-poll", s.cancel_poll_interval_s, self.poll_cancels),
        ):
            t = threading.Thread(target=self._every, args=(interval, fn), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        try:
            with self.platform.db.session() as session:
                workers.heartbeat(session=session, worker_id=self.worker_id, stopped_at=utcnow(), running_jobs=0)
        except Exception:  # noqa: BLE001 - shutting down; the heartbeat going stale says the same
            log.warning("could not record worker stop")
        self.platform.bus.close()
        self.cache.close()

    def _every(self, interval: float, fn: Callable[[], None]) -> None:
        while not self._stop.wait(interval):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a loop must outlive a database or broker blip
                log.exception("%s failed", threading.current_thread().name)

    def heartbeat(self) -> None:
        with self._lock:
            running = len(self.running)
            last_task = self.last_task_at
        with self.platform.db.session() as session:
            workers.heartbeat(
                session=session, worker_id=self.worker_id, host=socket.gethostname(), pid=os.getpid(),
                gpu_type=self.hardware.gpu_type, gpu_name=self.hardware.gpu_name, queues=self.queues,
                models_loaded=self.cache.names(), memory_free_bytes=self.hardware.memory_free_bytes(),
                memory_total_bytes=self.hardware.memory_total_bytes, running_jobs=running,
                last_task_at=last_task, stopped_at=None,
            )

    def _cancel(self, job_id: str) -> None:
        with self._lock:
            ev = self.running.get(job_id)
        if ev is not None and not ev.is_set():
            log.info("job=%s cancel requested", job_id)
            ev.set()

    def _invalidate(self, what: str) -> None:
        kind, _, name = what.partition(":")
        if kind == "model":
            self._specs.drop(name or None)

    def poll_cancels(self) -> None:
        """The fallback for cancels whose signal did not arrive (no live bus, Redis blip): a slow read."""
        with self._lock:
            ids = list(self.running)
        if not ids:
            return
        with self.platform.db.session() as session:
            statuses = lifecycle.statuses_of(session, ids)
        for job_id, status in statuses.items():
            if status == JobStatus.cancelling:
                self._cancel(job_id)
