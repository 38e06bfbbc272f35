"""Prometheus metrics of a worker process, served on its own port (LLMOS_WORKER_METRICS_PORT, 9101): what only
the worker sees. The platform's state (jobs by status, queue depth) is the API's /metrics (app/metrics.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from app.jobs.lifecycle import Claim
    from workers.runtime import WorkerRuntime

log = logging.getLogger("llmos.worker")

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
RATE_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

JOBS = Counter("llmos_worker_jobs", "Jobs this worker ended, by kind and outcome (succeeded, failed, cancelled, "
               "handed_back)", ["kind", "outcome"])
QUEUE_WAIT = Histogram("llmos_job_queue_wait_seconds", "Time from submit (queued) to running, first attempts",
                       ["kind"], buckets=WAIT_BUCKETS)
RUN_TIME = Histogram("llmos_job_run_seconds", "Time from running to done", ["kind", "outcome"], buckets=RUN_BUCKETS)
TOKENS = Counter("llmos_tokens_generated", "Completion tokens generated (generate jobs and batch chunks)", ["model"])
PROMPT_TOKENS = Counter("llmos_prompt_tokens", "Prompt tokens read", ["model"])
GEN_SECONDS = Counter("llmos_generation_seconds", "Seconds spent generating (generate jobs)", ["model"])
TOKENS_PER_S = Histogram("llmos_generation_tokens_per_second", "Tokens/s of each generate job", ["model"],
                         buckets=RATE_BUCKETS)
BATCH_DOCS = Counter("llmos_batch_documents", "Batch documents this worker finished", ["model"])
BATCH_SECONDS = Counter("llmos_batch_chunk_seconds", "Seconds spent on batch chunks", ["model"])
BATCH_DOCS_PER_S = Histogram("llmos_batch_documents_per_second", "Documents/s of each batch chunk", ["model"],
                             buckets=RATE_BUCKETS)
TRAINED_TOKENS = Counter("llmos_finetune_trained_tokens", "Tokens trained on by fine-tuning jobs", ["model"])


def job_claimed(claim: Claim) -> None:
    created = getattr(claim, "created_at", None)
    if created is not None and claim.attempt == 1:
        QUEUE_WAIT.labels(claim.kind).observe(max(0.0, (claim.started_at - created).total_seconds()))


def job_ended(claim: Claim, outcome: str, seconds: float, usage: dict[str, Any] | None = None) -> None:
    """Called once per claimed job with how it ended; `usage` of a success feeds the token and document counts."""
    JOBS.labels(claim.kind, outcome).inc()
    RUN_TIME.labels(claim.kind, outcome).observe(max(0.0, seconds))
    if not usage:
        return
    model = claim.model or "-"
    completion = _num(usage.get("completion_tokens"))
    if completion:
        TOKENS.labels(model).inc(completion)
    prompt = _num(usage.get("prompt_tokens"))
    if prompt:
        PROMPT_TOKENS.labels(model).inc(prompt)
    gen = _num(usage.get("generation_seconds"))
    if gen:
        GEN_SECONDS.labels(model).inc(gen)
    rate = _num(usage.get("tokens_per_second"))
    if rate and claim.kind == "generate":
        TOKENS_PER_S.labels(model).observe(rate)
    docs = _num(usage.get("documents"))
    if docs and claim.kind == "batch":
        BATCH_DOCS.labels(model).inc(docs)
        secs = _num(usage.get("seconds"))
        if secs:
            BATCH_SECONDS.labels(model).inc(secs)
            BATCH_DOCS_PER_S.labels(model).observe(docs / secs)
    trained = _num(usage.get("trained_tokens"))
    if trained:
        TRAINED_TOKENS.labels(model).inc(trained)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class RuntimeCollector:
    """Read when scraped: the model cache (hits, misses, loads, memory), device memory, running jobs."""

    def __init__(self, rt: WorkerRuntime) -> None:
        self.rt = rt

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        cache = rt.cache
        labels = ["worker", "gpu_type"]
        me = [rt.worker_id, rt.hardware.gpu_type]
        info = GaugeMetricFamily("llmos_worker_info", "This worker: its id, GPU type and device",
                                 labels=[*labels, "device", "gpu_name"])
        info.add_metric([*me, rt.hardware.device, rt.hardware.gpu_name or ""], 1)
        yield info
        running = GaugeMetricFamily("llmos_worker_jobs_running", "Jobs running on this worker now", labels=labels)
        with rt._lock:
            running.add_metric(me, len(rt.running))
        yield running
        hits = CounterMetricFamily("llmos_model_cache_hits", "Model requests answered by a loaded model",
                                   labels=labels)
        hits.add_metric(me, cache.hits)
        yield hits
        misses = CounterMetricFamily("llmos_model_cache_misses", "Model requests that needed a load (a base model "
                                     "or an adapter)", labels=labels)
        misses.add_metric(me, cache.cold_loads)
        yield misses
        models = list(getattr(cache, "_models", {}).values())
        loads = CounterMetricFamily("llmos_model_cache_loads", "Models (and adapters) loaded", labels=labels)
        loads.add_metric(me, cache.cold_loads)
        yield loads
        load_s = GaugeMetricFamily("llmos_model_load_seconds", "How long each loaded model took to load",
                                   labels=[*labels, "model"])
        for m in models:
            load_s.add_metric([*me, m.name], m.load_seconds)
        yield load_s
        mem = GaugeMetricFamily("llmos_model_cache_bytes", "Memory the loaded models take", labels=labels)
        mem.add_metric(me, sum(m.bytes for m in models))
        yield mem
        budget = GaugeMetricFamily("llmos_model_cache_budget_bytes", "The model cache's budget", labels=labels)
        budget.add_metric(me, cache.budget_bytes)
        yield budget
        count = GaugeMetricFamily("llmos_model_cache_models", "Models loaded (adapters included)", labels=labels)
        count.add_metric(me, len(cache.names()))
        yield count
        yield from self._device_memory(me, labels)

    def _device_memory(self, me: list[str], labels: list[str]) -> Iterator[Metric]:
        hw = self.rt.hardware
        dev = GaugeMetricFamily("llmos_device_memory_bytes", "Memory of the worker's device (GPU memory on a GPU, "
                                "the process's host memory on CPU)", labels=[*labels, "state"])
        free = hw.memory_free_bytes()
        if free is not None:
            dev.add_metric([*me, "free"], free)
        if hw.memory_total_bytes:
            dev.add_metric([*me, "total"], hw.memory_total_bytes)
        yield dev
        if not hw.device.startswith("cuda"):
            return
        try:
            import torch

            gpu = GaugeMetricFamily("llmos_gpu_memory_bytes", "torch's CUDA memory: allocated by tensors and "
                                    "reserved by the caching allocator", labels=[*labels, "state"])
            gpu.add_metric([*me, "allocated"], torch.cuda.memory_allocated())
            gpu.add_metric([*me, "reserved"], torch.cuda.memory_reserved())
            gpu.add_metric([*me, "max_allocated"], torch.cuda.max_memory_allocated())
            yield gpu
        except Exception:  # noqa: BLE001 - a scrape must not fail on a driver hiccup
            log.debug("gpu memory not read", exc_info=True)


def start(rt: WorkerRuntime, port: int) -> None:
    """Register the runtime's collector and serve /metrics on `port` (0: not served)."""
    if not port:
        return
    from app.metrics import serve

    REGISTRY.register(RuntimeCollector(rt))  # type: ignore[arg-type]
    serve(port, log=log)
