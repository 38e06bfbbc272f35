"""Batches: many documents, one task, processed by workers in GPU-sized chunks.

- Submission writes the batch, its items (bulk insert, no per-row round trip) and one chunk job per chunk (a job
  of kind `batch` with `batch_id` set) with their outbox rows, in one transaction; the chunks are published after
  commit like any job. From there the lifecycle core claims, runs, stores and recovers them: there is no
  second outbox, claim or reconciler for batches.
- A worker runs all of a chunk's documents through the model together; each item is written compare-and-set
  (queued -> succeeded | failed) in the transaction that ends the chunk job, and the batch's counters grow by
  what actually changed, so a duplicate delivery or a late worker counts nothing twice.
- When no chunk job is open, whoever notices first (the worker that ended the last chunk, the API after a
  cancel, the scheduler) claims finalisation compare-and-set, writes the output and error files and moves the
  batch to its final state exactly once (lifecycle.finish_batch).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import exists, insert, select, update
from sqlalchemy.orm import Session

from app.batch_schemas import TASK_MODEL_KINDS, Document, ValidatedBatch
from app.db import Database, rowcount
from app.errors import InvalidInput, NotFound
from app.jobs import kinds, lifecycle
from app.jobs.states import TERMINAL, JobStatus
from app.models import Batch, BatchItem, File, Job, utcnow
from app.services import files, webhooks
from app.services.jobs import route_for
from app.services.lookups import Lookups
from app.services.openai.completions import batch_line
from app.services.pagination import page, paginate
from app.settings import Settings

log = logging.getLogger(__name__)

ACTIVE_BATCH = (JobStatus.queued, JobStatus.running, JobStatus.cancelling)
OPEN_JOB = tuple(s for s in JobStatus if s not in TERMINAL)
FINALIZE_STALE_S = 600
CHUNK_KIND = "batch"

Row = tuple[int, str, str, int]


# ---- submission ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRow:
    """One document as stored: a document that failed before it could run (a bad line of an OpenAI batch
    file) is stored failed, in no chunk."""

    custom_id: str
    text: str
    extra: dict[str, Any] | None
    chunk: int
    status: str = "queued"
    error_code: str | None = None
    error_message: str | None = None


def submit_batch(*, db: Database, lookups: Lookups, settings: Settings, owner_id: int, spec: ValidatedBatch,
                 documents: list[Document]) -> tuple[Batch, list[Row]]:
    """The batch, its items and its chunk jobs in one transaction. Returns the batch and the outbox rows to
    publish after the commit."""
    env = spec.envelope
    entry = lookups.model(db, env.model, owner_id)
    if entry is None:
        raise InvalidInput(f"model {env.model!r} is not in the registry; GET /models lists them",
                           field="model", code="model_not_found")
    wanted = TASK_MODEL_KINDS[spec.task["type"]]
    if entry.kind not in wanted:
        raise InvalidInput(f"model {env.model!r} is a {entry.kind} model; {spec.task['type']} needs a "
                           f"{' or '.join(wanted)} model", field="model")
    if spec.task["type"] == "classify" and entry.kind == "causal-lm" and not spec.task.get("labels"):
        raise InvalidInput("task.labels: field required (zero-shot classification on a causal LM)",
                           field="task.labels")
    size = env.chunk_size or settings.batch_chunk_size
    items = [ItemRow(d.custom_id, d.text, d.extra, i // size) for i, d in enumerate(documents)]
    return open_batch(db=db, lookups=lookups, settings=settings, owner_id=owner_id, task=spec.task,
                      model=env.model, params=spec.params, gpu=env.gpu, default_gpu=entry.default_gpu,
                      priority=env.priority, metadata=env.metadata, input_file_id=env.input_file_id,
                      chunk_size=size, webhook=env.webhook, items=items)


def open_batch(*, db: Database, lookups: Lookups, settings: Settings, owner_id: int, task: dict[str, Any],
               model: str, params: dict[str, Any], gpu: str | list[str] | None, default_gpu: str | None,
               priority: int, metadata: dict[str, str], input_file_id: str | None, chunk_size: int,
               webhook: str | None, items: list[ItemRow]) -> tuple[Batch, list[Row]]:
    """Write a checked batch: its row, its items and one chunk job per chunk, in one transaction."""
    chunk_kind = kinds.get(CHUNK_KIND)
    assert chunk_kind is not None
    gpu_types, queue, _warning = route_for(db=db, lookups=lookups, settings=settings, family=chunk_kind.queue,
                                           gpu=gpu, model_default=default_gpu)
    n_chunks = max((it.chunk for it in items if it.status == "queued"), default=-1) + 1
    batch = Batch(id=lifecycle.new_id("batch"), owner_id=owner_id, status=JobStatus.queued, task=task,
                  model=model, params=params, gpu=gpu_types, queue=queue, priority=priority, metadata_=metadata,
                  input_file_id=input_file_id, chunk_size=chunk_size, total=len(items),
                  failed=sum(1 for it in items if it.status == "failed"), webhook=webhook)
    with db.session() as session:
        session.add(batch)
        session.flush()
        _insert_items(session, batch.id, items)
        rows = lifecycle.submit_many(session, [
            {"id": lifecycle.new_id("job"), "owner_id": owner_id, "kind": CHUNK_KIND, "model": model,
             "input": {"seq": seq}, "params": params, "gpu": gpu_types, "queue": queue, "priority": priority,
             "timeout_s": int(settings.batch_chunk_timeout_s), "max_attempts": chunk_kind.max_attempts,
             "batch_id": batch.id}
            for seq in range(n_chunks)])
    return batch, rows


def _insert_items(session: Session, batch_id: str, items: list[ItemRow]) -> None:
    """All items in one go: COPY on PostgreSQL (100,000 rows in about a second), executemany elsewhere."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur, cur.copy(
                "COPY batch_items (batch_id, idx, chunk, custom_id, text, extra, status, error_code, error_message)"
                " FROM STDIN") as copy:
            for i, it in enumerate(items):
                extra = json.dumps(it.extra) if it.extra is not None else None
                copy.write_row((batch_id, i, it.chunk, it.custom_id, it.text, extra, it.status, it.error_code,
                                it.error_message))
        return
    rows = [{"batch_id": batch_id, "idx": i, "chunk": it.chunk, "custom_id": it.custom_id, "text": it.text,
             "extra": it.extra, "status": it.status, "error_code": it.error_code, "error_message": it.error_message}
            for i, it in enumerate(items)]
    for start in range(0, len(rows), 10_000):
        session.execute(insert(BatchItem), rows[start:start + 10_000])


def read_file_documents(*, session: Session, owner_id: int, file_id: str) -> File:
    f = files.get_file(session=session, owner_id=owner_id, file_id=file_id)
    if f.purpose != "batch":
        raise InvalidInput(f"input_file_id: file {file_id} has purpose {f.purpose!r}; upload it with "
                           "purpose=batch", field="input_file_id")
    return f




# ---- reading and cancel --------------------------------------------------------------------------------


def get_batch(*, session: Session, owner_id: int, batch_id: str) -> Batch:
    b = session.get(Batch, batch_id)
    if b is None or b.owner_id != owner_id:
        raise NotFound(f"no batch {batch_id!r}", code="batch_not_found")
    return b


def list_batches(*, session: Session, owner_id: int, limit: int, cursor: str | None,
                 status: str | None = None) -> tuple[list[Batch], str | None]:
    stmt = select(Batch).where(Batch.owner_id == owner_id)
    if status:
        if status not in {s.value for s in JobStatus}:
            raise InvalidInput(f"unknown status {status!r}", field="status")
        stmt = stmt.where(Batch.status == status)
    stmt = paginate(stmt, created=Batch.created_at, key=Batch.id, cursor=cursor, limit=limit)
    return page(list(session.scalars(stmt)), limit, "created_at", "id")


def cancel_batch(*, session: Session, owner_id: int, batch_id: str) -> Batch:
    return lifecycle.cancel_batch(session, owner_id=owner_id, batch_id=batch_id)


# ---- worker side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkWork:
    batch_id: str
    seq: int
    owner_id: int
    model: str
    task: dict[str, Any]
    params: dict[str, Any]
    items: list[tuple[int, str, str, dict[str, Any] | None]]  # idx, custom_id, text, extra


def chunk_work(*, session: Session, batch_id: str, seq: int) -> ChunkWork | None:
    """What a claimed chunk job runs: its batch's task and the chunk's documents not yet finished."""
    b = session.get(Batch, batch_id)
    if b is None:
        return None
    items = [(int(r[0]), str(r[1]), str(r[2]), r[3]) for r in session.execute(
        select(BatchItem.idx, BatchItem.custom_id, BatchItem.text, BatchItem.extra)
        .where(BatchItem.batch_id == batch_id, BatchItem.chunk == seq, BatchItem.status == "queued")
        .order_by(BatchItem.idx))]
    return ChunkWork(batch_id=batch_id, seq=seq, owner_id=b.owner_id, model=b.model, task=dict(b.task),
                     params=dict(b.params), items=items)


@dataclass(frozen=True)
class ItemResult:
    idx: int
    output: Any = None
    error_code: str | None = None
    error_message: str | None = None


def store_results(*, session: Session, batch_id: str, results: list[ItemResult]) -> tuple[int, int]:
    """Write each item compare-and-set on `queued`; the batch's counters grow by what changed here."""
    ok = bad = 0
    for r in results:
        status = "failed" if r.error_code else "succeeded"
        res = session.execute(update(BatchItem).where(
            BatchItem.batch_id == batch_id, BatchItem.idx == r.idx, BatchItem.status == "queued")
            .values(status=status, output=r.output, error_code=r.error_code, error_message=r.error_message))
        if rowcount(res) == 1:
            if r.error_code:
                bad += 1
            else:
                ok += 1
    if ok or bad:
        session.execute(update(Batch).where(Batch.id == batch_id)
                        .values(completed=Batch.completed + ok, failed=Batch.failed + bad))
    return ok, bad




# ---- the end: files and the final state, once ------------------------------------------------------------


def _close_unfinished(session: Session, batch_id: str) -> None:
    """Documents left queued in chunk jobs that ended without running them (failed, cancelled, lost too often)
    take their chunk's end: cancelled with a cancelled chunk, failed with the chunk's error otherwise."""
    ended = session.execute(select(Job.input, Job.status, Job.error_code, Job.error_message).where(
        Job.batch_id == batch_id, Job.status.in_((JobStatus.failed, JobStatus.cancelled)))).all()
    failed = 0
    for inp, status, code, message in ended:
        cancelled = status == JobStatus.cancelled
        res = session.execute(update(BatchItem).where(
            BatchItem.batch_id == batch_id, BatchItem.chunk == inp["seq"], BatchItem.status == "queued")
            .values(status="cancelled" if cancelled else "failed", error_code=code or "internal",
                    error_message=message or "the chunk ended without running this document"),
            execution_options={"synchronize_session": False})
        if not cancelled:
            failed += rowcount(res)
    if failed:
        session.execute(update(Batch).where(Batch.id == batch_id).values(failed=Batch.failed + failed),
                        execution_options={"synchronize_session": False})


def finalize(*, db: Database, settings: Settings, batch_id: str) -> bool:
    """Once no chunk is queued or running: write the output and error files, move the batch to its final
    state. Claimed compare-and-set (`finalizing_at`), committed compare-and-set: it happens once."""
    open_chunks = exists().where(Job.batch_id == batch_id, Job.status.in_(OPEN_JOB))
    claim_at = utcnow()
    with db.session() as session:
        res = session.execute(update(Batch).where(
            Batch.id == batch_id, Batch.status.in_(ACTIVE_BATCH), Batch.finalizing_at.is_(None), ~open_chunks)
            .values(finalizing_at=claim_at), execution_options={"synchronize_session": False})
        if rowcount(res) != 1:
            return False
        b = session.get(Batch, batch_id)
        assert b is not None
        owner_id = b.owner_id
        openai_task = b.task.get("type") == "openai"
        expired = b.error_code == "expired"
        _close_unfinished(session, batch_id)
    out_id, err_id = files.new_file_id(), files.new_file_id()
    out = files.FileWriter(settings, out_id)
    err = files.FileWriter(settings, err_id)
    n_err = 0
    try:
        with db.session() as session:
            written = ("succeeded", "failed", "cancelled") if openai_task else ("succeeded", "failed")
            stmt = (select(BatchItem.custom_id, BatchItem.status, BatchItem.output, BatchItem.error_code,
                           BatchItem.error_message, BatchItem.extra)
                    .where(BatchItem.batch_id == batch_id, BatchItem.status.in_(written))
                    .order_by(BatchItem.idx).execution_options(yield_per=2000))
            for cid, status, output, code, message, extra in session.execute(stmt):
                if openai_task:  # OpenAI's output line format
                    obj = batch_line(cid, status, output, code, message, extra, expired=expired)
                else:
                    error = {"code": code, "message": message} if status == "failed" else None
                    obj = {"custom_id": cid, "output": output if status == "succeeded" else None, "error": error}
                line = json.dumps(obj, ensure_ascii=False) + "\n"
                if status == "succeeded" or not openai_task:
                    out.write(line.encode())
                if status != "succeeded":
                    err.write(line.encode())
                    n_err += 1
        out_path = out.commit()
        err_path = err.commit() if n_err else None
        if err_path is None:
            err.discard()
    except BaseException:
        out.discard()
        err.discard()
        with db.session() as session:  # let the next try claim it
            session.execute(update(Batch).where(Batch.id == batch_id, Batch.finalizing_at == claim_at)
                            .values(finalizing_at=None))
        raise
    with db.session() as session:
        b = session.get(Batch, batch_id)
        assert b is not None
        if b.status == JobStatus.cancelling and b.error_code == "expired":
            final, code, msg = JobStatus.cancelled, "expired", b.error_message
        elif b.status == JobStatus.cancelling:
            final, code, msg = JobStatus.cancelled, "cancelled", "cancelled by the user"
        elif b.total and b.failed == b.total:
            final, code, msg = JobStatus.failed, "all_documents_failed", "every document failed; see the error file"
        else:
            final, code, msg = JobStatus.succeeded, None, None
        values: dict[str, Any] = {"status": final.value, "output_file_id": out_id,
                                  "error_file_id": err_id if err_path else None, "error_code": code,
                                  "error_message": msg}
        if not lifecycle.finish_batch(session, batch_id=batch_id, claim_at=claim_at, values=values,
                                      event=lambda s, type_: webhooks.batch_event(s, batch_id, type_)):
            # cancelled meanwhile: release the claim and write the files again
            session.rollback()
            out_path.unlink(missing_ok=True)
            if err_path:
                err_path.unlink(missing_ok=True)
            session.execute(update(Batch).where(Batch.id == batch_id, Batch.finalizing_at == claim_at)
                            .values(finalizing_at=None))
            session.commit()
            return finalize(db=db, settings=settings, batch_id=batch_id)
        session.add(File(id=out_id, owner_id=owner_id, purpose="batch_output", filename=f"{batch_id}_output.jsonl",
                         bytes=out.size, sha256=out.digest.hexdigest(), path=str(out_path)))
        if err_path:
            session.add(File(id=err_id, owner_id=owner_id, purpose="batch_error",
                             filename=f"{batch_id}_errors.jsonl", bytes=err.size, sha256=err.digest.hexdigest(),
                             path=str(err_path)))
    log.info("batch=%s state=%s output=%s errors=%d", batch_id, final.value, out_id, n_err)
    return True




def finalize_pending(*, db: Database, settings: Settings) -> int:
    """The scheduler's safety net: batches with no open chunk job that are not final yet get finalised (the
    worker or API that should have done it died); a finaliser's claim gone stale is released first."""
    stale = utcnow() - timedelta(seconds=FINALIZE_STALE_S)
    nothing_open = ~exists().where(Job.batch_id == Batch.id, Job.status.in_(OPEN_JOB))
    with db.session() as session:
        rows = session.execute(select(Batch.id, Batch.finalizing_at)
                               .where(Batch.status.in_(ACTIVE_BATCH), nothing_open)).all()
        for batch_id, fin_at in rows:
            if fin_at is not None and fin_at < stale:
                session.execute(update(Batch).where(Batch.id == batch_id, Batch.finalizing_at == fin_at)
                                .values(finalizing_at=None))
    done = 0
    for batch_id, fin_at in rows:
        if fin_at is None or fin_at < stale:
            done += finalize(db=db, settings=settings, batch_id=batch_id)
    return done
