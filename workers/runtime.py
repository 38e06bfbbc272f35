"""What a running worker process holds: identity, hardware, model cache, and its background loops
(heartbeat into the database, outbox relay, cancel watcher, reconciler, webhook sender)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app import Platform
from app.models import utcnow
from app.services import batches, jobs, outbox, reconciler, webhooks, workers
from workers.hardware import GIB, Hardware
from workers.model_cache import ModelCache

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
    _webhook_pool: ThreadPoolExecutor | None = None
    training_slot: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(1))

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
        return cls(platform=platform, hardware=hardware, worker_id=worker_id, queues=queues, cache=cache,
                   training_slot=threading.Semaphore(s.finetune_concurrency))

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

    def handing_back(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._handing_back

    def begin_shutdown(self) -> None:
        """SIGTERM: running jobs get a grace period to finish; what is still running then goes back to the
        queue (stopped between steps, handed back by the task), so a deploy never loses or strands a job."""
        grace = self.platform.settings.shutdown_grace_s

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

    # ---- background loops --------------------------------------------------------------------------------

    def start(self) -> None:
        self.heartbeat()
        s = self.platform.settings
        self._webhook_pool = ThreadPoolExecutor(s.webhook_concurrency, thread_name_prefix="webhook")
        for name, interval, fn in (
            ("heartbeat", s.heartbeat_interval_s, self.heartbeat),
            ("outbox-relay", s.relay_interval_s, self.relay),
            ("cancel-watch", 0.25, self.watch_cancels),
            ("reconciler", s.reconcile_interval_s, self.reconcile),
            ("webhooks", s.webhook_sweep_interval_s, self.send_webhooks),
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
        if self._webhook_pool is not None:
            self._webhook_pool.shutdown(wait=False, cancel_futures=True)
        self.cache.close()

    def _every(self, interval: float, fn) -> None:  # noqa: ANN001
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

    def relay(self) -> None:
        outbox.relay(db=self.platform.db, publisher=self.platform.publisher)
        batches.relay(db=self.platform.db, publisher=self.platform.publisher)

    def reconcile(self) -> None:
        s = self.platform.settings
        reconciler.recover_lost_jobs(db=self.platform.db, stale_after_s=s.worker_lost_after_s,
                                     alive=frozenset({self.worker_id}))
        reconciler.republish_stranded(db=self.platform.db, queue_depth=self.platform.publisher.queue_depth,
                                      older_than_s=s.republish_after_s)
        batches.reconcile(db=self.platform.db, settings=s, queue_depth=self.platform.publisher.queue_depth,
                          alive=frozenset({self.worker_id}))

    def send_webhooks(self) -> None:
        """Sent from this thread's pool, not through a Celery queue: the database already is the queue
        (due time, lease, order), so a broker hop would add a second delivery layer and nothing else."""
        assert self._webhook_pool is not None
        webhooks.sweep(db=self.platform.db, settings=self.platform.settings, pool=self._webhook_pool)

    def watch_cancels(self) -> None:
        with self._lock:
            ids = list(self.running)
        if not ids:
            return
        with self.platform.db.session() as session:
            wanted = jobs.cancel_requested(session=session, job_ids=ids)
        with self._lock:
            for job_id in wanted:
                ev = self.running.get(job_id)
                if ev is not None and not ev.is_set():
                    log.info("job=%s cancel requested", job_id)
                    ev.set()
