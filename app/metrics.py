"""Prometheus metrics of the API process, and the platform's state read from the database.

Where each figure comes from (README "Metrics"):
- the API's `GET /metrics`: HTTP requests by route, method and status with latency histograms (this module's
  counters; under gunicorn several processes share them through prometheus-client's multiprocess mode, which
  `llmos api` turns on), and the platform's state as the database has it, read at scrape time and cached for
  `LLMOS_METRICS_CACHE_S`: jobs by kind and status, queued jobs and the age of the oldest per queue, workers,
  batches, webhook deliveries by status and attempts by outcome. Every API replica reports the same state:
  aggregate it with max(), not sum().
- each worker's own port (`LLMOS_WORKER_METRICS_PORT`, 9101): what only the worker sees (workers/metrics.py).
- the scheduler's own port (`LLMOS_SCHEDULER_METRICS_PORT`, 9102): its passes (`instrument_scheduler`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import case, func, select

from app.models import Batch, Job, JobStatus, WebhookAttempt, WebhookDelivery, Worker, utcnow

if TYPE_CHECKING:
    from app.db import Database
    from app.settings import Settings

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter("llmos_http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("llmos_http_request_duration_seconds", "Time to answer an HTTP request (long-polls "
                         "included)", ["route", "method"], buckets=LATENCY_BUCKETS)

# the scheduler's own figures, served on its port (not on the API's /metrics)
SCHEDULER_REGISTRY = CollectorRegistry()
SCHEDULER_PASS = Histogram("llmos_scheduler_pass_duration_seconds", "Time one scheduler pass took", ["name"],
                           buckets=LATENCY_BUCKETS, registry=SCHEDULER_REGISTRY)
SCHEDULER_FAILURES = Counter("llmos_scheduler_pass_failures", "Scheduler passes that raised", ["name"],
                             registry=SCHEDULER_REGISTRY)
SCHEDULER_ITEMS = Counter("llmos_scheduler_items", "What the scheduler's passes did: outbox rows relayed, jobs "
                          "re-queued, failed, republished or expired, webhooks delivered", ["what"],
                          registry=SCHEDULER_REGISTRY)
SCHEDULER_LEADER = Gauge("llmos_scheduler_leader", "1 while this scheduler holds the leader lock",
                         registry=SCHEDULER_REGISTRY)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(platform_registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The exposition text: this process's (or, under gunicorn, every API process's) metrics, then the
    platform's state."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = generate_latest(registry)
    if platform_registry is not None:
        body += generate_latest(platform_registry)
    return body, CONTENT_TYPE_LATEST


def serve(port: int, *, log: Any, registry: CollectorRegistry = REGISTRY) -> bool:
    """Serve this process's default registry on :port/metrics (workers, the scheduler). A taken port is a
    warning, not a reason to stop running jobs."""
    try:
        start_http_server(port, addr=os.environ.get("LLMOS_METRICS_ADDR", "0.0.0.0"), registry=registry)
    except OSError as exc:
        log.warning("metrics not served: port %d: %s", port, exc)
        return False
    log.info("metrics on :%d/metrics", port)
    return True


# ---- the platform's state, from the database -------------------------------------------------------------


class PlatformCollector:
    """Gauges read from the database when scraped (cached for `cache_s`, so several scrapers cost one read)."""

    def __init__(self, db: Database, settings: Settings, *, cache_s: float | None = None) -> None:
        self.db = db
        self.settings = settings
        self.cache_s = settings.metrics_cache_s if cache_s is None else cache_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._cached: list[Metric] = []

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if not self._cached or now - self._at >= self.cache_s:
                self._cached = self._read()
                self._at = now
            yield from self._cached

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily("llmos_database_up", "1 when the API could read the platform's state")
        try:
            out = self._query()
        except Exception:  # noqa: BLE001 - a scrape during a database outage says so instead of failing
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *out]

    def _query(self) -> list[Metric]:
        now = utcnow()
        jobs = GaugeMetricFamily("llmos_jobs", "Jobs in the database by kind and status (batch chunks are kind "
                                 "'batch')", labels=["kind", "status"])
        queued = GaugeMetricFamily("llmos_queue_depth", "Jobs waiting (status queued) per queue", labels=["queue"])
        oldest = GaugeMetricFamily("llmos_queue_oldest_age_seconds", "Age of the oldest queued job per queue",
                                   labels=["queue"])
        running = GaugeMetricFamily("llmos_queue_running", "Jobs running (or cancelling) per queue", labels=["queue"])
        workers = GaugeMetricFamily("llmos_workers", "Workers by GPU type: alive (heart-beating) or not",
                                    labels=["gpu_type", "state"])
        worker_jobs = GaugeMetricFamily("llmos_worker_running_jobs", "Jobs a live worker runs (its last heartbeat)",
                                        labels=["worker", "gpu_type"])
        batches = GaugeMetricFamily("llmos_batches", "Batches by status", labels=["status"])
        deliveries = GaugeMetricFamily("llmos_webhook_deliveries", "Webhook deliveries by status (pending, "
                                       "delivered, failed)", labels=["status"])
        attempts = CounterMetricFamily("llmos_webhook_attempts", "Webhook delivery attempts by outcome: success "
                                       "(2xx), http_error (another status), network_error (no answer)",
                                       labels=["outcome"])
        with self.db.session() as s:
            for kind, status, n in s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind,
                                                                                               Job.status)):
                jobs.add_metric([kind, _status(status)], n)
            open_rows = s.execute(select(Job.queue, Job.status, func.count(), func.min(Job.created_at))
                                  .where(Job.status.in_((JobStatus.queued, JobStatus.running, JobStatus.cancelling)))
                                  .group_by(Job.queue, Job.status)).all()
            worker_rows = s.execute(select(Worker.id, Worker.gpu_type, Worker.last_heartbeat_at, Worker.stopped_at,
                                           Worker.running_jobs)).all()
            for status, n in s.execute(select(Batch.status, func.count()).group_by(Batch.status)):
                batches.add_metric([_status(status)], n)
            for delivery_status, n in s.execute(select(WebhookDelivery.status, func.count())
                                                .group_by(WebhookDelivery.status)):
                deliveries.add_metric([delivery_status], n)
            code = WebhookAttempt.status_code
            outcome = case((code.is_(None), "network_error"), ((code >= 200) & (code < 300), "success"),
                           else_="http_error")
            counts: dict[str, int] = dict(s.execute(select(outcome, func.count()).group_by(outcome)).all())
        for name in ("success", "http_error", "network_error"):
            attempts.add_metric([name], counts.get(name, 0))
        depth: dict[str, tuple[int, Any]] = {}
        busy: dict[str, int] = {}
        for queue, status, n, first in open_rows:
            if _status(status) == "queued":
                depth[queue] = (n, first)
            else:
                busy[queue] = busy.get(queue, 0) + n
        for queue in sorted(set(depth) | set(busy)):
            n, first = depth.get(queue, (0, None))
            queued.add_metric([queue], n)
            oldest.add_metric([queue], max(0.0, (now - first).total_seconds()) if first is not None else 0.0)
            running.add_metric([queue], busy.get(queue, 0))
        stale = self.settings.worker_lost_after_s
        by_type: dict[tuple[str, str], int] = {}
        for wid, gpu_type, beat, stopped, n in worker_rows:
            alive = stopped is None and (now - beat).total_seconds() <= stale
            by_type[(gpu_type, "alive" if alive else "gone")] = by_type.get((gpu_type, "alive" if alive else "gone"),
                                                                            0) + 1
            if alive:
                worker_jobs.add_metric([wid, gpu_type], n)
        for (gpu_type, state), n in sorted(by_type.items()):
            workers.add_metric([gpu_type, state], n)
        return [jobs, queued, oldest, running, workers, worker_jobs, batches, deliveries, attempts]


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))


def platform_registry(db: Database, settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(db, settings))
    return registry


# ---- the scheduler ---------------------------------------------------------------------------------------


def instrument_scheduler(sched: Any) -> None:
    """Time and count the scheduler's passes. Its loop calls `self.relay` etc., so wrapping the bound methods
    on the instance is enough: the Scheduler class knows nothing of metrics."""

    def wrap(name: str, fn: Callable[[], Any], count: Callable[[Any], dict[str, int]]) -> Callable[[], Any]:
        def timed() -> Any:
            t0 = time.perf_counter()
            try:
                result = fn()
            except Exception:
                SCHEDULER_FAILURES.labels(name).inc()
                raise
            finally:
                SCHEDULER_PASS.labels(name).observe(time.perf_counter() - t0)
            for what, n in count(result).items():
                if n:
                    SCHEDULER_ITEMS.labels(what).inc(n)
            return result

        return timed

    def report(r: Any) -> dict[str, int]:
        return {k: int(getattr(r, k, 0) or 0) for k in ("requeued", "failed", "cancelled", "republished",
                                                          "expired")}

    sched.relay = wrap("relay", sched.relay, lambda n: {"relayed": int(n or 0)})
    sched.reconcile = wrap("reconcile", sched.reconcile, report)
    sched.send_webhooks = wrap("webhooks", sched.send_webhooks, lambda n: {"webhooks_delivered": int(n or 0)})
    held = sched.leadership.held

    def leader() -> bool:
        value = bool(held())
        SCHEDULER_LEADER.set(1 if value else 0)
        return value

    sched.leadership.held = leader
