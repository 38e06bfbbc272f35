"""Request validation (what comes in) and public shapes (what goes out). Models are never serialised raw."""

from __future__ import annotations

import math
import re
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


# ---- characters and shapes no request may carry --------------------------------------------------------
# NUL cannot be stored (PostgreSQL's text and jsonb refuse it) and a lone surrogate cannot be encoded as UTF-8:
# both are refused in every string of a request, keys included. Names, ids, labels and metadata refuse every
# control character as well; free text (prompts, messages, documents) keeps tabs, newlines and the like.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_JSON_DEPTH = 64  # objects and arrays nested deeper than this are refused (422)


def unstorable(s: str) -> str | None:
    """Why `s` cannot be taken (None when it can): a NUL character or a lone surrogate."""
    m = UNSTORABLE.search(s)
    if m is None:
        return None
    return "must not contain a NUL character" if m.group() == "\x00" else "must not contain a lone surrogate"


def control_problem(s: str) -> str | None:
    """Why `s` cannot be a name, id, label or metadata (None when it can)."""
    return unstorable(s) or ("must not contain control characters" if CONTROL.search(s) else None)


def check_json(value: Any, prefix: str = "", *, skip: frozenset[str] = frozenset()) -> None:
    """Every string (keys too), number and nesting level of a parsed JSON body, before it is validated or stored:
    NUL, lone surrogates, NaN/Infinity and nesting deeper than MAX_JSON_DEPTH are 422s naming the field.
    Top-level keys in `skip` are left to their own checks (a batch's documents)."""
    stack: list[tuple[Any, str, int]] = [(value, prefix, 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            why = unstorable(v)
            if why:
                raise InvalidInput(f"{path}: {why}" if path else why, field=path or None)
        elif isinstance(v, dict):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidInput(f"{path}: nested more than {MAX_JSON_DEPTH} levels deep", field=path or None)
            for k, x in v.items():
                sub = f"{path}.{k}" if path else str(k)
                why = unstorable(k)
                if why:
                    raise InvalidInput(f"{path or 'body'}: a key {why}", field=path or None)
                if depth == 0 and k in skip:
                    continue
                stack.append((x, sub, depth + 1))
        elif isinstance(v, list):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidInput(f"{path}: nested more than {MAX_JSON_DEPTH} levels deep", field=path or None)
            stack.extend((x, f"{path}.{i}" if path else str(i), depth + 1) for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise InvalidInput(f"{path}: must be a finite number" if path else "numbers must be finite",
                               field=path or None)


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
    cache: bool = Field(True, description="false: never answer from the result cache (nor store this result)")

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
        why = None if v is None else control_problem(v)
        if why:
            raise ValueError(why)
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        return check_metadata(v)


def check_metadata(v: dict[str, str]) -> dict[str, str]:
    """Metadata rules (jobs and batches): at most 16 keys of up to 64 characters, values up to 512, no control
    characters in either."""
    if len(v) > 16:
        raise ValueError("at most 16 metadata keys")
    for key, value in v.items():
        if len(key) > 64 or len(value) > 512:
            raise ValueError("metadata keys are at most 64 characters, values at most 512")
        why = control_problem(key) or control_problem(value)
        if why:
            raise ValueError(f"metadata keys and values {why}")
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


def parse(model: type[M], data: Any, prefix: str = "", *, check: bool = True) -> M:
    """Validate a JSON object into `model`; any problem is a 422 naming the field (under `prefix`). `check`:
    run check_json over it first (leave it off for parts of a body already checked)."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{prefix} must be a JSON object" if prefix else "the request body must be a JSON object",
                           field=prefix or None)
    if check:
        check_json(data, prefix)
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
    inp = parse(kind.input, env.input, "input", check=False)
    params = parse(kind.params, env.params, "params", check=False)
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
        "model_kinds": list(k.model_kinds),  # every kind of model it runs on (finetune: causal-lm, embedding)
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


# ---- what goes out, as schemas: the OpenAPI document's response shapes (app.api.openapi) -----------------
# The *_public functions above build these objects; tests/test_openapi.py checks the two agree on the live server.

Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
Timestamp = str  # ISO 8601 UTC, "2026-01-01T00:00:00.000000Z"


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(Out):
    code: str = Field(description="machine-readable: invalid_input, not_found, rate_limited, ...")
    message: str
    field: str | None = Field(None, description="the request field at fault, dotted: params.max_new_tokens")


class ErrorBody(Out):
    """Every native error, for every path, method and size."""

    error: ErrorDetail


class JobError(Out):
    code: str
    message: str | None


class JobPublic(Out):
    id: str = Field(description="job_…")
    object: Literal["job"]
    kind: str
    model: str | None
    status: Status
    batch_id: str | None
    input: dict[str, Any]
    params: dict[str, Any]
    gpu: str | list[str] | None
    queue: str | None
    priority: int
    timeout_s: int | None
    metadata: dict[str, str]
    attempts: int
    worker_id: str | None
    progress: dict[str, Any] | None
    output: dict[str, Any] | None = Field(description="generate: {text, finish_reason}; embed: {embedding}; "
                                                      "finetune: {model, checkpoints}; echo: its input")
    usage: dict[str, Any] | None
    error: JobError | None
    created_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    cancel_requested_at: Timestamp | None
    webhook: str | None
    webhook_events: list[str] | None
    urls: dict[str, str]


class EventPublic(Out):
    id: str
    object: Literal["job.event"]
    job_id: str
    type: str = Field(description="the state entered, or a happening: progress, retry, worker_lost, ...")
    created_at: Timestamp | None
    message: str | None
    data: dict[str, Any]


class CheckpointPublic(Out):
    id: str
    object: Literal["fine_tuning.checkpoint"]
    job_id: str
    step: int
    total_steps: int | None
    epoch: float | int | None
    attempt: int | None
    reason: str | None
    metrics: dict[str, Any]
    created_at: Timestamp | None


class AttemptPublic(Out):
    created_at: Timestamp | None
    status_code: int | None
    latency_ms: float | int | None
    error: str | None


class DeliveryPublic(Out):
    id: str
    object: Literal["webhook_delivery"]
    job_id: str | None
    batch_id: str | None
    type: str
    url: str
    webhook_id: str | None
    status: str
    attempts: int
    next_attempt_at: Timestamp | None
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp | None
    delivered_at: Timestamp | None
    payload: dict[str, Any] | None
    attempt_log: list[AttemptPublic]


class ModelPublic(Out):
    id: str
    object: Literal["model"]
    version: str | None
    kind: str
    source_type: str | None
    default_gpu: str | None
    base_model: str | None
    owned_by: str
    job_id: str | None
    created_at: Timestamp | None


class KindPublic(Out):
    id: str
    object: Literal["kind"]
    description: str
    model_kind: str | list[str] | None
    model_kinds: list[str] = Field(default_factory=list, description="every kind of model it runs on")
    queue_family: str
    default_timeout_s: int | None
    cancellable: bool
    resumable: bool
    schemas: dict[str, Any] = Field(description="the kind's input, params and output JSON schemas")


class WorkerEntry(Out):
    """An admin key sees workers (id, host, pid, queues, ...); other keys see one gpu_pool per GPU type."""

    object: Literal["worker", "gpu_pool"]
    gpu_type: str | None = None


class Deleted(Out):
    id: str
    object: str
    deleted: Literal[True]


class Health(Out):
    status: str


class WebhookDefaultPublic(Out):
    url: str | None
    events: list[str]


class WebhookSecretPublic(Out):
    secret: str


class WebhookSecretRotated(Out):
    secret: str
    previous_secret_expires_at: Timestamp | None
