"""Request validation (what comes in) and public shapes (what goes out). Models are never serialised raw."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.errors import InvalidInput, TooLarge
from app.models import Checkpoint, Job, JobEvent, ModelEntry, WebhookAttempt, WebhookDelivery, Worker
from app.queue import ANY, GPU_TYPES
from app.services.webhook_http import UnsafeUrl, check_url
from app.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


WebhookEvent = Literal["started", "progress", "completed"]
DEFAULT_WEBHOOK_EVENTS = ("completed",)


class JobCreate(_Strict):
    kind: str = Field(min_length=1, max_length=32)
    model: str = Field(min_length=1, max_length=200)
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
    def _model(cls, v: str) -> str:
        if "\x00" in v:
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


class WebhookDefault(_Strict):
    """PUT /webhooks/default: the URL and filter for jobs that name no webhook; url null turns it off."""

    url: str | None = Field(None, min_length=1, max_length=2048)
    events: list[WebhookEvent] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS), min_length=1)

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


def check_webhook_url(url: str, settings: Settings, field: str) -> None:
    try:
        check_url(url, allow_private=settings.webhook_allow_private)
    except UnsafeUrl as exc:
        raise InvalidInput(f"{field}: {exc}", field=field) from None


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateInput(_Strict):
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _one(self) -> GenerateInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of input.prompt or input.messages")
        return self

    def chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) for m in self.messages or [])


class GenerateParams(_Strict):
    max_new_tokens: int = Field(256, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=100_000)
    stop: list[str] = Field(default_factory=list, max_length=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list) and any(isinstance(s, str) and not (0 < len(s) <= 200) for s in v):
            raise ValueError("each stop string must be 1 to 200 characters")
        return v


class EmbedInput(_Strict):
    text: str = Field(min_length=1)


class EmbedParams(_Strict):
    normalize: bool = True


class LoraParams(_Strict):
    r: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64,
                                             description="module names to adapt; default every linear layer")


class FinetuneInput(_Strict):
    training_file: str = Field(min_length=1, max_length=40)
    validation_file: str | None = Field(None, min_length=1, max_length=40)


class FinetuneParams(_Strict):
    method: Literal["lora"] = "lora"
    lora: LoraParams = Field(default_factory=LoraParams)
    n_epochs: int = Field(3, ge=1, le=1000)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=1024)
    max_seq_len: int = Field(1024, ge=8, le=131_072)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    log_every_steps: int = Field(10, ge=1, description="a progress event with losses every this many steps")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="checkpoints besides one per epoch")


@dataclass(frozen=True)
class KindSpec:
    input: type[BaseModel]
    params: type[BaseModel]
    model_kind: str


KINDS: dict[str, KindSpec] = {
    "generate": KindSpec(GenerateInput, GenerateParams, "causal-lm"),
    "embed": KindSpec(EmbedInput, EmbedParams, "embedding"),
    "finetune": KindSpec(FinetuneInput, FinetuneParams, "causal-lm"),
}


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


def check_generate_params(params: BaseModel, settings: Settings) -> None:
    """Limits of generation parameters that depend on settings (jobs and batches alike)."""
    if not isinstance(params, GenerateParams):
        return
    if params.max_new_tokens > settings.max_new_tokens_limit:
        raise InvalidInput(
            f"params.max_new_tokens: at most {settings.max_new_tokens_limit}", field="params.max_new_tokens"
        )
    if params.min_new_tokens > params.max_new_tokens:
        raise InvalidInput("params.min_new_tokens: at most max_new_tokens", field="params.min_new_tokens")


def validate_job(body: Any, settings: Settings) -> ValidatedJob:
    env = parse(JobCreate, body)
    spec = KINDS.get(env.kind)
    if spec is None:
        raise InvalidInput(f"unknown kind {env.kind!r}; one of: {', '.join(KINDS)}", field="kind")
    inp = parse(spec.input, env.input, "input")
    params = parse(spec.params, env.params, "params")
    if isinstance(inp, GenerateInput) and inp.chars() > settings.max_prompt_chars:
        raise TooLarge(
            f"the prompt is {inp.chars()} characters; the limit is {settings.max_prompt_chars}",
            field="input.messages" if inp.messages else "input.prompt",
            code="prompt_too_large",
        )
    if isinstance(inp, EmbedInput) and len(inp.text) > settings.max_prompt_chars:
        raise TooLarge(f"the text is {len(inp.text)} characters; the limit is {settings.max_prompt_chars}",
                       field="input.text", code="prompt_too_large")
    check_generate_params(params, settings)
    if env.timeout_s is not None and env.timeout_s > settings.max_timeout_s:
        raise InvalidInput(f"timeout_s: at most {settings.max_timeout_s}", field="timeout_s")
    if env.webhook is not None:
        check_webhook_url(env.webhook, settings, "webhook")
    elif env.webhook_events is not None:
        raise InvalidInput("webhook_events: give webhook too", field="webhook_events")
    return ValidatedJob(env, inp.model_dump(exclude_none=True), params.model_dump())


# ---- what goes out -------------------------------------------------------------------------------------


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def job_public(job: Job, base_url: str = "") -> dict[str, Any]:
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    url = f"{base_url}/jobs/{job.id}"
    return {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "model": job.model,
        "status": job.status,
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
