"""Fine-tuning: what is checked at submit, checkpoints, and the new model registered when a job succeeds.

The training itself runs on a worker (workers/engines/finetune.py); this module is the database side of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput, NotFound
from app.jobs import lifecycle
from app.kinds.finetune import ENCODER_METHODS
from app.models import Checkpoint, File, Job, ModelEntry
from app.services import datasets
from app.services.lookups import forget
from app.services.pagination import page, paginate
from app.settings import Settings

log = logging.getLogger(__name__)

FILE_FIELDS = ("training_file", "validation_file")


def model_name(base: str, suffix: str | None, job_id: str) -> str:
    """`<base>:ft-<suffix>-<short id>`, the name a finished job registers (OpenAI-style `ft:` names)."""
    short = job_id.removeprefix("job_")[:8]
    return f"{base}:ft-{suffix}-{short}" if suffix else f"{base}:ft-{short}"


def job_dir(settings: Settings, job_id: str) -> Path:
    assert settings.finetune_dir is not None
    return settings.finetune_dir / job_id


def dataset_file(*, session: Session, owner_id: int, file_id: str, field: str) -> File:
    row = session.get(File, file_id)
    if row is None or row.owner_id != owner_id:
        raise InvalidInput(f"{field}: no file {file_id!r}; upload it with POST /files (purpose fine-tune)",
                           field=f"input.{field}", code="file_not_found")
    if row.purpose != "fine-tune":
        raise InvalidInput(f"{field}: file {file_id} was uploaded for {row.purpose!r}; training data needs "
                           "purpose 'fine-tune'", field=f"input.{field}")
    return row


def check_submission(*, session: Session, settings: Settings, owner_id: int, base: ModelEntry,
                     input: dict[str, Any], params: dict[str, Any]) -> None:
    """422 now for what can be known now: the base model, the files, and (when small enough to read during
    a request) every line of them."""
    if base.base_model is not None:
        raise InvalidInput(f"model {base.name!r} is itself fine-tuned; fine-tune its base {base.base_model!r}",
                           field="model")
    method = params.get("method", "lora")
    wanted = "causal-lm" if method == "lora" else "embedding"
    if base.kind != wanted:
        raise InvalidInput(f"model {base.name!r} is a {base.kind} model; method {method!r} trains a {wanted} model"
                           + (" (an encoder)" if wanted == "embedding" else ""), field="model")
    if len(model_name(base.name, params.get("suffix"), "job_" + "0" * 8)) > 200:
        raise InvalidInput("the fine-tuned model's name would be longer than 200 characters; shorten the suffix",
                           field="params.suffix")
    labels: dict[str, tuple[str, ...]] = {}
    for field in FILE_FIELDS:
        if input.get(field) is None:
            continue
        row = dataset_file(session=session, owner_id=owner_id, file_id=input[field], field=field)
        if row.bytes > settings.finetune_check_max_bytes:
            continue  # the worker checks it before training
        try:
            labels[field] = datasets.check_file(Path(row.path), method).labels
            check_labels(method, labels)
        except datasets.DatasetError as exc:
            raise InvalidInput(f"{field} {row.id}: {exc}", field=f"input.{field}", code="invalid_file") from None
        except OSError as exc:
            raise InvalidInput(f"{field} {row.id} cannot be read: {exc.strerror}", field=f"input.{field}",
                               code="invalid_file") from None


def check_labels(method: str, labels: dict[str, tuple[str, ...]]) -> None:
    """Encoder methods: enough classes to learn, and none in the validation file that training never shows.
    `labels`: the labels (or entity types) of each file checked, by field."""
    train = labels.get("training_file")
    if method == "lora" or train is None:
        return
    if method == "classification" and len(train) < 2:
        raise datasets.DatasetError(None, f"classification needs at least 2 labels; the file has {list(train)}")
    if method == "token_classification" and not train:
        raise datasets.DatasetError(None, "no entity tags in the file (every tag is 'O')")
    unseen = sorted(set(labels.get("validation_file", ())) - set(train))
    if unseen:
        what = "labels" if method == "classification" else "entity types"
        raise datasets.DatasetError(None, f"{what} {unseen} are not in the training file")


# ---- checkpoints ---------------------------------------------------------------------------------------


def add_checkpoint(*, session: Session, job_id: str, attempt: int, step: int, total_steps: int, epoch: int,
                   reason: str, path: str, metrics: dict[str, Any], keep: int) -> list[str] | None:
    """Record a checkpoint the worker saved; only the job's current attempt may (a lost worker that is
    still running writes nothing). The newest `keep` stay; the rows of older ones are deleted and their
    directories returned, for the worker to remove once this commits. None: not the current attempt."""
    if not lifecycle.hold(session, job_id=job_id, attempt=attempt):
        return None
    ckpt = Checkpoint(id=lifecycle.new_id("ckpt"), job_id=job_id, attempt=attempt, step=step, total_steps=total_steps,
                      epoch=epoch, reason=reason, path=path, metrics=metrics)
    session.add(ckpt)
    lifecycle.add_event(session, job_id, "checkpoint", f"checkpoint at step {step}/{total_steps} ({reason})",
              checkpoint_id=ckpt.id, step=step, epoch=epoch, reason=reason, **metrics)
    session.flush()
    old = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                          .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc()).offset(keep)).all()
    for row in old:
        session.delete(row)
    return [row.path for row in old]


def latest_checkpoint(*, session: Session, job_id: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id)
                          .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc()).limit(1))


def list_checkpoints(*, session: Session, owner_id: int, job_id: str, limit: int,
                     cursor: str | None) -> tuple[list[Checkpoint], str | None]:
    job = lifecycle.get_owned(session, owner_id=owner_id, job_id=job_id)
    if job.kind != "finetune":
        raise NotFound(f"job {job_id} is a {job.kind} job; only fine-tuning jobs have checkpoints",
                       code="not_found")
    stmt = paginate(select(Checkpoint).where(Checkpoint.job_id == job_id), created=Checkpoint.created_at,
                    key=Checkpoint.id, cursor=cursor, limit=limit)
    return page(list(session.scalars(stmt)), limit, "created_at", "id")


# ---- the result ----------------------------------------------------------------------------------------


def register_model(session: Session, *, job_id: str, output: dict[str, Any], adapter_path: str) -> None:
    """The new model, registered in the transaction that marks its job succeeded (lifecycle.succeed's `also`):
    a user who sees `succeeded` can use `output.model` at once."""
    job = session.get(Job, job_id)
    assert job is not None and job.model is not None
    base = session.get(ModelEntry, job.model)
    method = output.get("method", "lora")
    if method in ENCODER_METHODS:  # a whole model directory (LoRA merged in), served on its own
        session.add(ModelEntry(
            name=output["model"], kind=ENCODER_METHODS[method], source_type="hf_dir", source=adapter_path,
            base_model=job.model, adapter_path=adapter_path, default_gpu=base.default_gpu if base else None,
            owner_id=job.owner_id, job_id=job_id,
            config={"method": method, "labels": output["labels"], "tuning": job.params.get("tuning") or "full"},
        ))
        session.flush()
        forget(session, f"model:{output['model']}")
        return
    session.add(ModelEntry(
        name=output["model"], kind="causal-lm", source_type="adapter", source=adapter_path, base_model=job.model,
        adapter_path=adapter_path, default_gpu=base.default_gpu if base else None, owner_id=job.owner_id,
        job_id=job_id, config={"lora": job.params.get("lora", {})},
    ))
    session.flush()
    forget(session, f"model:{output['model']}")
