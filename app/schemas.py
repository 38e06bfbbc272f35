"""Request validation (what comes in) and public shapes (what goes out). Models are never serialised raw."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from app.errors import InvalidInput
from app.jobs import kinds
from app.models import Checkpoint, Job, JobEvent, ModelEntry, WebhookAttempt, WebhookDelivery, Worker
from app.queue import ANY, GPU_TYPES
from app.settings import Settings
from app.webhook_http import UnsafeUrl, check_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


WebhookEvent = Literal["started", "progress", "completed"]
DEFAULT_WEBHOOK_EVENTS = ("completed",)
# webhook event type -> the filter name a job subscribes with
WEBHOOK_FILTERS = {"job.started": "started", "job.progress": "progress", "job.succeeded": "completed",
                   "job.failed": "completed", "job.cancelled": "completed"}


class JobCreate(_Strict):
    kind: str = Field(min_length=1, max_length=32)
    model: str | None = Field(None, min_length=1, max_length=200)
    input: dict[str, Any]
    params: dict[str, Any] = Field(default_factory=dict)
    gpu: str | list[str] | None = None
    priority: int = Field(5, ge=0, le=9)
    timeout_s: int | None = Field(None, ge=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook: str | None = Field(None, min_length=1, max_length=2048)
    webhook_events: list[WebhookEvent] | None = Field(None, min_length=1)

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else list(dict.fromkeys(v))

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is None:
            return v
        values = [v] if isinstance(v, str) else v
        if not values:
            raise ValueError("gpu list must not be empty")
        for t in values:
            if t != ANY and t not in GPU_TYPES:
                raise ValueError(f"unknown gpu type {t!r}; use 'any' or one of: {', '.join(GPU_TYPES)}")
        if ANY in values and len(values) > 1:
            raise ValueError("'any' cannot be combined with other gpu types")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("must not contain a NUL character")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 16:
            raise ValueError("at most 16 metadata keys")
        for key, value in v.items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("metadata keys are at most 64 characters, values at most 512")
        return v


def _default_events() -> list[WebhookEvent]:
    return ["completed"]


class WebhookDefault(_Strict):
    """PUT /webhooks/default: the URL and filter for jobs that name no webhook; url null turns it off."""

    url: str | None = Field(None, min_length=1, max_length=2048)
    events: list[WebhookEvent] = Field(default_factory=_default_events, min_length=1)

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


def check_webhook_url(url: str, settings: Settings, field: str) -> None:
    try:
        check_url(url, allow_private=settings.webhook_allow_private)
    except UnsafeUrl as exc:
        raise InvalidInput(f"{field}: {exc}", field=field) from None


def _field(loc: tuple[Any, ...], prefix: str = "") -> str:
    parts = [str(p) for p in loc if p not in ("function-after", "function-before")]
    # pydantic puts the union member's type name in the path ("gpu.str"); drop those
    parts = [p for p in parts if p not in ("str", "list[str]", "int", "float", "constrained-str")]
    return ".".join(([prefix] if prefix else []) + parts)


def validation_error(exc: ValidationError, prefix: str = "") -> InvalidInput:
    first = exc.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    field = _field(tuple(first["loc"]), prefix) or None
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "field required"
    return InvalidInput(f"{field}: {msg}" if field else msg, field=field)


@dataclass(frozen=True)
class ValidatedJob:
    envelope: JobCreate
    input: dict[str, Any]
    params: dict[str, Any]


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate a JSON object into `model`; any problem is a 422 naming the field (under `prefix`)."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{prefix} must be a JSON object" if prefix else "the request body must be a JSON object",
                           field=prefix or None)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, prefix) from None


def validate_job(body: Any, settings: Settings) -> ValidatedJob:
    """The envelope, then the kind's own input and params schemas and limits (from its declaration)."""
    env = parse(JobCreate, body)
    kind = kinds.get(env.kind)
    if kind is None or not kind.public:
        raise InvalidInput(f"unknown kind {env.kind!r}; one of: {', '.join(kinds.public_names())}", field="kind")
    if kind.model_kind is not None and env.model is None:
        raise InvalidInput(f"model: field required ({env.kind} jobs run on a {kind.model_kind} model)",
                           field="model")
    if kind.model_kind is None and env.model is not None:
        raise InvalidInput(f"model: {env.kind} jobs use no model; leave it out", field="model")
    inp = parse(kind.input, env.input, "input")
    params = parse(kind.params, env.params, "params")
    if kind.limits is not None:
        kind.limits(inp, params, settings)
    if env.timeout_s is not None and env.timeout_s > settings.max_timeout_s:
        raise InvalidInput(f"timeout_s: at most {settings.max_timeout_s}", field="timeout_s")
    if env.webhook is not None:
        check_webhook_url(env.webhook, settings, "webhook")
    elif env.webhook_events is not None:
        raise InvalidInput("webhook_events: give webhook too", field="webhook_events")
    data = inp.model_dump() if isinstance(inp, RootModel) else inp.model_dump(exclude_none=True)
    return ValidatedJob(env, data, params.model_dump())


# ---- what goes out -------------------------------------------------------------------------------------


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def job_public(job: Job, base_url: str = "") -> dict[str, Any]:
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    url = f"{base_url}/jobs/{job.id}"
    return {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "model": job.model,
        "status": job.status.value,
        "batch_id": job.batch_id,
        "input": job.input,
        "params": job.params,
        "gpu": job.gpu,
        "queue": job.queue,
        "priority": job.priority,
        "timeout_s": job.timeout_s,
        "metadata": job.metadata_ or {},
        "attempts": job.attempts,
        "worker_id": job.worker_id,
        "progress": job.progress,
        "output": job.output,
        "usage": job.usage,
        "error": error,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "cancel_requested_at": iso(job.cancel_requested_at),
        "webhook": job.webhook,
        "webhook_events": job.webhook_events,
        "urls": {"get": url, "cancel": f"{url}/cancel", "events": f"{url}/events",
                 **({"checkpoints": f"{url}/checkpoints"} if job.kind == "finetune" else {})},
    }


def kind_public(k: kinds.JobKind) -> dict[str, Any]:
    return {
        "id": k.name,
        "object": "kind",
        "description": k.description,
        "model_kind": k.model_kind,
        "queue_family": k.queue,
        "default_timeout_s": k.default_timeout_s,
        "cancellable": k.cancellable,
        "resumable": k.resumable,
        "schemas": k.schemas(),
    }


def checkpoint_public(c: Checkpoint) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "fine_tuning.checkpoint",
        "job_id": c.job_id,
        "step": c.step,
        "total_steps": c.total_steps,
        "epoch": c.epoch,
        "attempt": c.attempt,
        "reason": c.reason,
        "metrics": c.metrics or {},
        "created_at": iso(c.created_at),
    }


def event_public(ev: JobEvent) -> dict[str, Any]:
    return {
        "id": f"evt_{ev.id}",
        "object": "job.event",
        "job_id": ev.job_id,
        "type": ev.type,
        "created_at": iso(ev.created_at),
        "message": ev.message,
        "data": ev.data or {},
    }


def delivery_public(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": d.id,
        "object": "webhook_delivery",
        "job_id": d.job_id,
        "batch_id": d.batch_id,
        "type": d.event_type,
        "url": d.url,
        "webhook_id": d.webhook_id,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
        "payload": d.payload,
        "attempt_log": [
            {"created_at": iso(a.created_at), "status_code": a.status_code, "latency_ms": a.latency_ms,
             "error": a.error}
            for a in attempts
        ],
    }


def model_public(m: ModelEntry) -> dict[str, Any]:
    return {
        "id": m.name,
        "object": "model",
        "version": m.version,
        "kind": m.kind,
        "source_type": m.source_type,
        "default_gpu": m.default_gpu,
        "base_model": m.base_model,
        "owned_by": "system" if m.owner_id is None else "you",
        "job_id": m.job_id,
        "created_at": iso(m.created_at),
    }


def worker_public(w: Worker, alive: bool) -> dict[str, Any]:
    return {
        "id": w.id,
        "object": "worker",
        "host": w.host,
        "pid": w.pid,
        "gpu_type": w.gpu_type,
        "gpu_name": w.gpu_name,
        "queues": w.queues,
        "models_loaded": w.models_loaded,
        "memory_free_bytes": w.memory_free_bytes,
        "memory_total_bytes": w.memory_total_bytes,
        "running_jobs": w.running_jobs,
        "alive": alive,
        "started_at": iso(w.started_at),
        "last_heartbeat_at": iso(w.last_heartbeat_at),
        "last_task_at": iso(w.last_task_at),
        "stopped_at": iso(w.stopped_at),
    }
