"""/v1/batches: OpenAI's Batch API on the core's batch path.

The input file is OpenAI's Batch JSONL (`custom_id`, `method`, `url`, `body` per line). Every line is checked
at create with the same translation as a synchronous request (app.services.openai.completions); a bad line is
stored failed with its reason and reported in the error file the way OpenAI reports it, while the good lines
run in GPU-sized chunks like any batch. The batch's native row is shown with OpenAI's statuses and timestamps.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import Database, rowcount
from app.errors import ApiError, InvalidInput
from app.jobs import lifecycle
from app.jobs.states import JobStatus
from app.models import Batch, utcnow
from app.schemas import parse
from app.services import batches
from app.services.batches import ItemRow, Row
from app.services.lookups import Lookups
from app.services.openai.common import after_page, olist, ts
from app.services.openai.completions import parse_call
from app.services.openai.files import file_id, native_file_id
from app.settings import Settings

TASK = "openai"
WINDOW = timedelta(hours=24)
MODEL_KIND = {"/v1/chat/completions": "causal-lm", "/v1/completions": "causal-lm", "/v1/embeddings": "embedding"}


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None  # files here never expire; accepted and not needed

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("at most 16 keys of up to 64 characters, values up to 512")
        return v


def _failed(custom_id: str, exc: ApiError) -> ItemRow:
    return ItemRow(custom_id, "", {"param": exc.field} if exc.field else None, chunk=-1, status="failed",
                   error_code=exc.code, error_message=exc.message)


def read_lines(path: Path, endpoint: str, settings: Settings) -> tuple[list[ItemRow], str | None]:
    """Every line of the input file as an item: the native job input and params of a good line, the reason of a
    bad one. Returns the items and the model the good lines name."""
    rows: list[ItemRow] = []
    seen: set[str] = set()
    model: str | None = None
    size = settings.batch_chunk_size
    good = 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if len(rows) >= settings.max_batch_documents:
                raise InvalidInput(f"at most {settings.max_batch_documents} requests in one batch "
                                   "(LLMOS_MAX_BATCH_DOCUMENTS)", field="input_file_id")
            cid = f"line-{n}"
            try:
                try:
                    line = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InvalidInput(f"line {n} is not valid JSON: {exc}") from None
                if not isinstance(line, dict):
                    raise InvalidInput(f"line {n} must be a JSON object with custom_id, method, url and body")
                if isinstance(line.get("custom_id"), str) and 1 <= len(line["custom_id"]) <= 255 \
                        and "\x00" not in line["custom_id"]:
                    cid = line["custom_id"]
                else:
                    raise InvalidInput(f"line {n}: custom_id must be a string of 1 to 255 characters",
                                       field="custom_id")
                if cid in seen:
                    raise InvalidInput(f"line {n}: duplicate custom_id {cid!r}", field="custom_id",
                                       code="duplicate_custom_id")
                seen.add(cid)
                if line.get("method") != "POST":
                    raise InvalidInput(f"line {n}: method must be POST", field="method")
                if line.get("url") != endpoint:
                    raise InvalidInput(f"line {n}: url must be the batch's endpoint {endpoint}", field="url")
                call = parse_call(endpoint, line.get("body"), settings)
                if call.stream:
                    raise InvalidInput(f"line {n}: stream is not available in a batch", field="stream")
                if model is None:
                    model = call.model
                elif call.model != model:
                    raise InvalidInput(f"line {n}: every line of a batch must use the same model ({model!r})",
                                       field="model", code="model_mismatch")
            except ApiError as exc:
                rows.append(_failed(cid, exc))
                continue
            rows.append(ItemRow(cid, "", {"input": call.spec.input, "params": call.spec.params}, good // size))
            good += 1
    if not rows:
        raise InvalidInput("input_file_id: the file has no requests", field="input_file_id")
    return rows, model


def create(*, db: Database, lookups: Lookups, settings: Settings, owner_id: int,
           body: Any) -> tuple[Batch, list[Row]]:
    req = parse(BatchRequest, body)
    with db.session() as session:
        f = batches.read_file_documents(session=session, owner_id=owner_id, file_id=native_file_id(req.input_file_id))
        path = Path(f.path)
    items, model = read_lines(path, req.endpoint, settings)
    default_gpu = None
    if model is not None:
        entry = lookups.model(db, model, owner_id)
        wanted = MODEL_KIND[req.endpoint]
        problem = (None if entry is not None and entry.kind == wanted else
                   ApiError(f"model {model!r} is not in the registry", code="model_not_found", field="model")
                   if entry is None else
                   InvalidInput(f"model {model!r} is a {entry.kind} model; {req.endpoint} needs a {wanted} model",
                                field="model"))
        if problem is not None:  # every line names it: every line fails, with the reason
            items = [_failed(it.custom_id, problem) if it.status == "queued" else it for it in items]
        else:
            assert entry is not None
            default_gpu = entry.default_gpu
    return batches.open_batch(
        db=db, lookups=lookups, settings=settings, owner_id=owner_id,
        task={"type": TASK, "endpoint": req.endpoint, "completion_window": req.completion_window},
        model=model or "", params={}, gpu=None, default_gpu=default_gpu, priority=5, metadata=req.metadata or {},
        input_file_id=f.id, chunk_size=settings.batch_chunk_size, webhook=None, items=items)


# ---- what goes out -------------------------------------------------------------------------------------


def status(b: Batch) -> str:
    if b.status in (JobStatus.queued, JobStatus.running):
        return "finalizing" if b.finalizing_at is not None else "in_progress"
    if b.status == JobStatus.cancelling:
        return "cancelling"
    if b.status == JobStatus.succeeded:
        return "completed"
    if b.status == JobStatus.cancelled:
        return "expired" if b.error_code == "expired" else "cancelled"
    return "failed"


def batch_object(b: Batch) -> dict[str, Any]:
    st = status(b)
    final = ts(b.finished_at)
    errors = None
    if st == "failed":
        errors = {"object": "list", "data": [{"code": b.error_code, "message": b.error_message, "param": None,
                                              "line": None}]}
    return {
        "id": b.id, "object": "batch", "endpoint": b.task.get("endpoint"), "errors": errors,
        "input_file_id": file_id(b.input_file_id) if b.input_file_id else None,
        "completion_window": b.task.get("completion_window", "24h"), "status": st,
        "output_file_id": file_id(b.output_file_id) if b.output_file_id else None,
        "error_file_id": file_id(b.error_file_id) if b.error_file_id else None,
        "created_at": ts(b.created_at), "in_progress_at": ts(b.created_at),
        "expires_at": ts(b.created_at + WINDOW), "finalizing_at": ts(b.finalizing_at),
        "completed_at": final if st == "completed" else None, "failed_at": final if st == "failed" else None,
        "expired_at": final if st == "expired" else None, "cancelling_at": ts(b.cancel_requested_at),
        "cancelled_at": final if st == "cancelled" else None,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata_ or None, "model": b.model or None,
    }


def get(*, session: Session, owner_id: int, batch_id: str) -> Batch:
    b = batches.get_batch(session=session, owner_id=owner_id, batch_id=batch_id)
    if b.task.get("type") != TASK:
        raise ApiError(f"batch {batch_id} was made with POST /batches; read it there", code="batch_not_found",
                       status=404)
    return b


def list_batches(*, session: Session, owner_id: int, after: str | None, limit: int) -> dict[str, Any]:
    stmt = select(Batch).where(Batch.owner_id == owner_id, Batch.task["type"].as_string() == TASK)
    rows, more = after_page(session, stmt, created=Batch.created_at, key=Batch.id, after=after, limit=limit)
    return olist([batch_object(b) for b in rows], more)


def expire_overdue(*, db: Database, settings: Settings, now: Any = None) -> int:
    """The scheduler's pass: OpenAI batches past their completion window stop (chunks not started are
    cancelled; running ones finish) and end `expired`, their unrun requests in the error file."""
    cutoff = (now or utcnow()) - WINDOW
    with db.session() as session:
        overdue = session.execute(select(Batch.id, Batch.owner_id).where(
            Batch.status.in_((JobStatus.queued, JobStatus.running)), Batch.created_at < cutoff,
            Batch.task["type"].as_string() == TASK)).all()
    n = 0
    for batch_id, owner_id in overdue:
        try:
            with db.session() as session:
                lifecycle.cancel_batch(session, owner_id=owner_id, batch_id=batch_id)
                n += rowcount(session.execute(update(Batch).where(Batch.id == batch_id).values(
                    error_code="expired",
                    error_message="the batch did not finish within its 24h completion window")))
        except ApiError:  # it finished meanwhile
            continue
        batches.finalize(db=db, settings=settings, batch_id=batch_id)
    return n
