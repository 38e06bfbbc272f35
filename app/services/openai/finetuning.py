"""/v1/fine_tuning/jobs: OpenAI's fine-tuning API over native `finetune` jobs. A request becomes the body of a
native POST /jobs (same validation, same submit path); a job renders as a `fine_tuning.job` object with `ftjob-`
ids, `file-` ids, resolved hyperparameters and OpenAI's statuses; events and checkpoints come from the native ones."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import Conflict, InvalidInput, NotFound
from app.models import Checkpoint, Job, JobEvent, Owner
from app.schemas import validate_job
from app.services import finetunes, jobs
from app.services.lookups import Lookups
from app.services.openai.common import after_page, olist, to_native, to_v1, ts
from app.services.openai.files import file_id, native_file_id
from app.settings import Settings

JOB_PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"
BASE_LEARNING_RATE = 2e-4  # learning_rate_multiplier 1.0 (and "auto") is the native default

_KNOWN = {"model", "training_file", "validation_file", "hyperparameters", "suffix", "seed", "metadata", "method",
          "integrations"}
_HYPER = {"n_epochs": "n_epochs", "batch_size": "batch_size", "learning_rate_multiplier": "learning_rate"}
# a native error's field -> the /v1 parameter the user sent
_FIELDS = {"input.training_file": "training_file", "input.validation_file": "validation_file",
           "params.n_epochs": "hyperparameters.n_epochs", "params.batch_size": "hyperparameters.batch_size",
           "params.learning_rate": "hyperparameters.learning_rate_multiplier", "params.suffix": "suffix",
           "params.seed": "seed"}
# native status -> OpenAI's (a job being stopped is shown as stopped: it will not train further)
_STATUS = {"queued": "queued", "running": "running", "cancelling": "cancelled", "succeeded": "succeeded",
           "failed": "failed", "cancelled": "cancelled"}
_WARN = {"warning", "worker_lost", "retry", "webhook_failed"}


def job_id(native: str) -> str:
    return to_v1(native, JOB_PREFIX)


def native_job_id(v1_id: str) -> str:
    return to_native(v1_id, JOB_PREFIX, "job")


# ---- create -------------------------------------------------------------------------------------------


def _hyperparameters(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The hyperparameters given (top level, or under method.supervised as newer clients send them)."""
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            kind = method.get("type") if isinstance(method, dict) else method
            raise InvalidInput(f"method.type: only 'supervised' fine-tuning is supported here, not {kind!r}",
                               field="method.type")
        hp = (method.get("supervised") or {}).get("hyperparameters")
        if hp is not None:
            return hp, "method.supervised.hyperparameters"
    return body.get("hyperparameters") or {}, "hyperparameters"


def native_body(body: Any) -> dict[str, Any]:
    """A /v1 create request as the body of a native POST /jobs (kind finetune). Raises InvalidInput naming the
    /v1 parameter for what the native schema cannot name (unknown fields, unsupported methods, "auto")."""
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    for name in body:
        if name not in _KNOWN:
            raise InvalidInput(f"{name}: unknown parameter", field=name)
    if body.get("integrations"):
        raise InvalidInput("integrations: not supported here; read metrics from the job's events and checkpoints",
                           field="integrations")
    hp, where = _hyperparameters(body)
    if not isinstance(hp, dict):
        raise InvalidInput(f"{where} must be an object", field=where)
    params: dict[str, Any] = {}
    for name, value in hp.items():
        if name not in _HYPER:
            raise InvalidInput(f"{where}.{name}: unknown hyperparameter; one of {', '.join(_HYPER)}",
                               field=f"hyperparameters.{name}")
        if value == "auto":
            continue
        if name == "learning_rate_multiplier":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidInput(f"{where}.{name}: a positive number or 'auto'", field=f"hyperparameters.{name}")
            value = BASE_LEARNING_RATE * value
        params[_HYPER[name]] = value
    for name in ("suffix", "seed"):
        if body.get(name) is not None:
            params[name] = body[name]
    params.setdefault("seed", secrets.randbelow(2**31))  # OpenAI: "if a seed is not specified, one is generated"
    inp = {name: native_file_id(body[name]) if isinstance(body[name], str) else body[name]
           for name in ("training_file", "validation_file") if body.get(name) is not None}
    return {"kind": "finetune", "model": body.get("model"), "input": inp, "params": params,
            "metadata": body.get("metadata") or {}}


def _as_v1(exc: InvalidInput, native: dict[str, Any]) -> InvalidInput:
    """A native validation error in /v1 terms: the parameter's /v1 name, `file-` ids in the message."""
    field = _FIELDS.get(exc.field or "", exc.field)
    message = exc.message
    if exc.field and field != exc.field:
        message = message.replace(exc.field, field or "")
    for fid in native["input"].values():
        if isinstance(fid, str):
            message = message.replace(fid, file_id(fid))
    return InvalidInput(message, field=field, code=exc.code)


def create(*, db: Database, lookups: Lookups, settings: Settings, owner_id: int, body: Any,
           idempotency_key: str | None) -> tuple[Job, tuple[int, str, str, int] | None]:
    """Submit a native finetune job exactly as POST /jobs does. Returns the job and its outbox row to publish
    (None for an idempotent replay)."""
    native = native_body(body)
    try:
        spec = validate_job(native, settings)
        return jobs.create_job(db=db, lookups=lookups, settings=settings, owner_id=owner_id, spec=spec,
                               body=body, idempotency_key=idempotency_key)
    except InvalidInput as exc:
        raise _as_v1(exc, native) from None


# ---- read ---------------------------------------------------------------------------------------------


def _owner_name(session: Session, owner_id: int) -> str:
    owner = session.get(Owner, owner_id)
    return owner.name if owner is not None else str(owner_id)


def _tuned_name(job: Job) -> str:
    """The model the job registers (or will): output.model once it succeeded."""
    if job.output and job.output.get("model"):
        return str(job.output["model"])
    return finetunes.model_name(job.model or "", job.params.get("suffix"), job.id)


def job_object(job: Job, organization: str) -> dict[str, Any]:
    p = job.params
    status = _STATUS[job.status.value]
    hyper = {"n_epochs": p["n_epochs"], "batch_size": p["batch_size"],
             "learning_rate_multiplier": round(p["learning_rate"] / BASE_LEARNING_RATE, 6)}
    done = status == "succeeded"
    error = None
    if status == "failed":
        error = {"code": job.error_code or "internal", "message": job.error_message or "", "param": None}
    return {
        "id": job_id(job.id), "object": "fine_tuning.job", "created_at": ts(job.created_at),
        "finished_at": ts(job.finished_at), "model": job.model,
        "fine_tuned_model": (job.output or {}).get("model") if done else None,
        "organization_id": organization, "status": status, "hyperparameters": hyper,
        "training_file": file_id(job.input["training_file"]),
        "validation_file": file_id(job.input["validation_file"]) if job.input.get("validation_file") else None,
        "result_files": [], "trained_tokens": (job.usage or {}).get("trained_tokens") if done else None,
        "error": error, "seed": p.get("seed", 0), "estimated_finish": None, "integrations": [],
        "metadata": job.metadata_ or None, "user_provided_suffix": p.get("suffix"),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
    }


def get(*, session: Session, owner_id: int, v1_id: str) -> Job:
    """The owner's finetune job behind an `ftjob-` id; any other job is unknown here."""
    job = session.get(Job, native_job_id(v1_id))
    if job is None or job.owner_id != owner_id or job.kind != "finetune":
        raise NotFound(f"no fine-tuning job {v1_id!r}", code="not_found")
    return job


def retrieve(*, session: Session, owner_id: int, v1_id: str) -> dict[str, Any]:
    return job_object(get(session=session, owner_id=owner_id, v1_id=v1_id), _owner_name(session, owner_id))


def cancel(*, session: Session, owner_id: int, v1_id: str) -> dict[str, Any]:
    job = get(session=session, owner_id=owner_id, v1_id=v1_id)
    try:
        job = jobs.cancel_job(session=session, owner_id=owner_id, job_id=job.id)
    except Conflict:
        raise Conflict(f"fine-tuning job {v1_id} already {_STATUS[job.status.value]}; only queued or running "
                       "jobs can be cancelled", code="job_finished") from None
    return job_object(job, _owner_name(session, owner_id))


def list_jobs(*, session: Session, owner_id: int, after: str | None, limit: int) -> dict[str, Any]:
    stmt = select(Job).where(Job.owner_id == owner_id, Job.kind == "finetune", Job.batch_id.is_(None))
    rows, more = after_page(session, stmt, created=Job.created_at, key=Job.id,
                            after=native_job_id(after) if after else None, limit=limit)
    name = _owner_name(session, owner_id)
    return olist([job_object(j, name) for j in rows], more)


def event_object(ev: JobEvent) -> dict[str, Any]:
    metrics = ev.type == "progress" and "train_loss" in (ev.data or {})
    level = "error" if ev.type == "failed" else "warn" if ev.type in _WARN else "info"
    message = ev.message or ev.type
    if ev.type in ("succeeded", "failed", "cancelled"):
        message = f"Job {ev.type}: {message}"
    data = dict(ev.data or {})
    if isinstance(data.get("file"), str):  # the ids a /v1 user knows
        data["file"] = file_id(data["file"])
    if isinstance(data.get("checkpoint_id"), str):
        data["checkpoint_id"] = to_v1(data["checkpoint_id"], CHECKPOINT_PREFIX)
    return {"id": f"{EVENT_PREFIX}{ev.id}", "object": "fine_tuning.job.event", "created_at": ts(ev.created_at),
            "level": level, "message": message, "type": "metrics" if metrics else "message", "data": data}


def list_events(*, session: Session, owner_id: int, v1_id: str, after: str | None, limit: int) -> dict[str, Any]:
    """The job's native timeline, newest first (event ids grow with time)."""
    job = get(session=session, owner_id=owner_id, v1_id=v1_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        try:
            stmt = stmt.where(JobEvent.id < int(after.removeprefix(EVENT_PREFIX)))
        except ValueError:
            raise InvalidInput(f"after: no event {after!r}", field="after") from None
    rows = list(session.scalars(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)))
    return olist([event_object(e) for e in rows[:limit]], len(rows) > limit)


def checkpoint_object(c: Checkpoint, job: Job) -> dict[str, Any]:
    metrics = {"step": c.step, **{k: v for k, v in (c.metrics or {}).items() if isinstance(v, int | float)}}
    return {"id": to_v1(c.id, CHECKPOINT_PREFIX), "object": "fine_tuning.job.checkpoint",
            "created_at": ts(c.created_at), "fine_tuned_model_checkpoint": f"{_tuned_name(job)}:ckpt-step-{c.step}",
            "fine_tuning_job_id": job_id(job.id), "metrics": metrics, "step_number": c.step}


def list_checkpoints(*, session: Session, owner_id: int, v1_id: str, after: str | None,
                     limit: int) -> dict[str, Any]:
    job = get(session=session, owner_id=owner_id, v1_id=v1_id)
    rows, more = after_page(session, select(Checkpoint).where(Checkpoint.job_id == job.id),
                            created=Checkpoint.created_at, key=Checkpoint.id,
                            after=to_native(after, CHECKPOINT_PREFIX, "ckpt") if after else None, limit=limit)
    return olist([checkpoint_object(c, job) for c in rows], more)
