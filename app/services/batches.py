"""Batches: many documents, one task, processed by workers in GPU-sized chunks.

- Submission writes the batch, its items (bulk insert, no per-row round trip) and one `batch_chunks` row per
  chunk in one transaction. `batch_chunks.sent_at` makes that table the batches' outbox: chunks are published
  after commit (fast path) and by the relay for whatever that missed.
- A worker claims a chunk compare-and-set (queued -> running), runs all its documents through the model
  together, and writes each item compare-and-set (queued -> succeeded | failed); the batch's counters grow by
  what actually changed, so a duplicate delivery or a late worker counts nothing twice.
- A chunk whose worker stopped heart-beating, or that ran past `batch_chunk_timeout_s`, goes back to queued
  (the reconciler); its finished items stay finished.
- When no chunk is queued or running, whoever notices first (worker finishing the last chunk, the API after
  a cancel, the reconciler) claims finalisation compare-and-set, writes the output and error files and moves
  the batch to its final state exactly once.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import and_, exists, insert, select, update
from sqlalchemy.orm import Session

from app.batch_schemas import TASK_MODEL_KIND, Document, ValidatedBatch
from app.db import Database
from app.errors import Conflict, InvalidInput, NotFound
from app.models import Batch, BatchChunk, BatchItem, File, JobStatus, utcnow
from app.services import files, registry, webhooks
from app.services.jobs import new_id, route
from app.services.pagination import page, paginate
from app.settings import Settings

log = logging.getLogger(__name__)

ACTIVE_BATCH = (JobStatus.queued.value, JobStatus.running.value, JobStatus.cancelling.value)
OPEN_CHUNK = ("queued", "running")
MAX_CHUNK_ATTEMPTS = 3
FINALIZE_STALE_S = 600


class PublishesChunks(Protocol):
    def publish_chunk(self, *, batch_id: str, seq: int, queue: str, priority: int) -> None: ...


# ---- submission ----------------------------------------------------------------------------------------


def submit_batch(*, session: Session, settings: Settings, owner_id: int, spec: ValidatedBatch,
                 documents: list[Document]) -> Batch:
    env = spec.envelope
    entry = registry.get_model(session=session, name=env.model, owner_id=owner_id)
    if entry is None:
        raise InvalidInput(f"model {env.model!r} is not in the registry; GET /models lists them",
                           field="model", code="model_not_found")
    wanted_kind = TASK_MODEL_KIND[spec.task["type"]]
    if entry.kind != wanted_kind:
        raise InvalidInput(f"model {env.model!r} is a {entry.kind} model; {spec.task['type']} needs a "
                           f"{wanted_kind} model", field="model")
    requested = [env.gpu] if isinstance(env.gpu, str) else env.gpu
    gpu, queue, _warning = route(session=session, kind="batch", requested=requested,
                                 model_default=entry.default_gpu, stale_after_s=settings.heartbeat_interval_s * 3)
    size = env.chunk_size or settings.batch_chunk_size
    batch = Batch(id=new_id("batch"), owner_id=owner_id, status=JobStatus.queued.value, task=spec.task,
                  model=env.model, params=spec.params, gpu=gpu, queue=queue, priority=env.priority,
                  metadata_=env.metadata, input_file_id=env.input_file_id, chunk_size=size, total=len(documents),
                  webhook=env.webhook)
    session.add(batch)
    session.flush()
    _insert_items(session, batch.id, size, documents)
    session.execute(insert(BatchChunk.__table__),
                    [{"batch_id": batch.id, "seq": s, "status": "queued", "attempts": 0}
                     for s in range(math.ceil(len(documents) / size))])
    return batch


def _insert_items(session: Session, batch_id: str, size: int, documents: list[Document]) -> None:
    """All items in one go: COPY on PostgreSQL (100,000 rows in about a second), executemany elsewhere."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(
                "COPY batch_items (batch_id, idx, chunk, custom_id, text, extra, status) FROM STDIN") as copy:
            for i, d in enumerate(documents):
                extra = json.dumps(d.extra) if d.extra is not None else None
                copy.write_row((batch_id, i, i // size, d.custom_id, d.text, extra, "queued"))
        return
    rows = [{"batch_id": batch_id, "idx": i, "chunk": i // size, "custom_id": d.custom_id, "text": d.text,
             "extra": d.extra, "status": "queued"} for i, d in enumerate(documents)]
    for start in range(0, len(rows), 10_000):
        session.execute(insert(BatchItem.__table__), rows[start:start + 10_000])


def read_file_documents(*, session: Session, owner_id: int, file_id: str) -> File:
    f = files.get_file(session=session, owner_id=owner_id, file_id=file_id)
    if f.purpose != "batch":
        raise InvalidInput(f"input_file_id: file {file_id} has purpose {f.purpose!r}; upload it with "
                           "purpose=batch", field="input_file_id")
    return f


def publish_chunks(*, db: Database, publisher: PublishesChunks, batch_id: str) -> int:
    """The fast path after commit: publish every unsent chunk of one batch, then mark them sent in one write."""
    with db.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            return 0
        queue, priority = batch.queue, batch.priority
        seqs = list(session.scalars(select(BatchChunk.seq).where(
            BatchChunk.batch_id == batch_id, BatchChunk.status == "queued", BatchChunk.sent_at.is_(None))
            .order_by(BatchChunk.seq)))
    return _send(db, publisher, [(batch_id, s, queue, priority) for s in seqs])


def _send(db: Database, publisher: PublishesChunks, rows: list[tuple[str, int, str, int]]) -> int:
    sent: list[tuple[str, int]] = []
    try:
        for batch_id, seq, queue, priority in rows:
            publisher.publish_chunk(batch_id=batch_id, seq=seq, queue=queue, priority=priority)
            sent.append((batch_id, seq))
    except Exception as exc:  # broker down: the relay publishes the rest later
        log.warning("batch chunk publish failed after %d, left for the relay: %s", len(sent), exc)
    now = utcnow()
    by_batch: dict[str, list[int]] = {}
    for batch_id, seq in sent:
        by_batch.setdefault(batch_id, []).append(seq)
    with db.session() as session:
        for batch_id, seqs in by_batch.items():
            for start in range(0, len(seqs), 1000):
                session.execute(update(BatchChunk).where(
                    BatchChunk.batch_id == batch_id, BatchChunk.seq.in_(seqs[start:start + 1000]))
                    .values(sent_at=now))
    return len(sent)


def relay(*, db: Database, publisher: PublishesChunks, older_than_s: float = 2.0, limit: int = 5000) -> int:
    """Publish queued chunks never sent (broker was down, API died after commit, reconciler re-queued them)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as session:
        rows = session.execute(
            select(BatchChunk.batch_id, BatchChunk.seq, Batch.queue, Batch.priority)
            .join(Batch, Batch.id == BatchChunk.batch_id)
            .where(BatchChunk.status == "queued", BatchChunk.sent_at.is_(None), Batch.created_at < cutoff)
            .order_by(Batch.created_at, BatchChunk.seq).limit(limit)
        ).all()
    sent = _send(db, publisher, [tuple(r) for r in rows]) if rows else 0
    if sent:
        log.info("batch relay published %d chunk(s)", sent)
    return sent


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
    """Chunks not started are cancelled with their documents; running chunks finish, and what finished stays
    in the output. The batch is `cancelling` until then, `cancelled` once finalised."""
    b = get_batch(session=session, owner_id=owner_id, batch_id=batch_id)
    if b.status in (JobStatus.cancelling.value, JobStatus.cancelled.value):
        return b
    res = session.execute(update(Batch).where(
        Batch.id == batch_id, Batch.status.in_((JobStatus.queued.value, JobStatus.running.value)))
        .values(status=JobStatus.cancelling.value, cancel_requested_at=utcnow()))
    if res.rowcount != 1:
        session.refresh(b)
        raise Conflict(f"batch {batch_id} already {b.status}; only queued or running batches can be cancelled",
                       code="batch_finished")
    session.execute(update(BatchChunk).where(BatchChunk.batch_id == batch_id, BatchChunk.status == "queued")
                    .values(status="cancelled"))
    cancelled_chunks = select(BatchChunk.seq).where(BatchChunk.batch_id == batch_id,
                                                    BatchChunk.status == "cancelled")
    session.execute(update(BatchItem).where(BatchItem.batch_id == batch_id, BatchItem.status == "queued",
                                            BatchItem.chunk.in_(cancelled_chunks))
                    .values(status="cancelled", error_code="cancelled", error_message="batch cancelled"))
    session.flush()
    session.refresh(b)
    return b


# ---- worker side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkWork:
    batch_id: str
    seq: int
    attempt: int
    owner_id: int
    model: str
    task: dict[str, Any]
    params: dict[str, Any]
    items: list[tuple[int, str, str, dict[str, Any] | None]]  # idx, custom_id, text, extra


def claim_chunk(*, session: Session, batch_id: str, seq: int, worker_id: str) -> ChunkWork | None:
    """queued -> running, or None (duplicate delivery, cancelled, finished). The batch starts running too."""
    now = utcnow()
    res = session.execute(update(BatchChunk).where(
        BatchChunk.batch_id == batch_id, BatchChunk.seq == seq, BatchChunk.status == "queued")
        .values(status="running", attempts=BatchChunk.attempts + 1, worker_id=worker_id, claimed_at=now))
    if res.rowcount != 1:
        return None
    session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == JobStatus.queued.value)
                    .values(status=JobStatus.running.value, started_at=now))
    b = session.get(Batch, batch_id)
    attempt = session.scalar(select(BatchChunk.attempts).where(BatchChunk.batch_id == batch_id,
                                                               BatchChunk.seq == seq))
    assert b is not None and attempt is not None
    items = [tuple(r) for r in session.execute(
        select(BatchItem.idx, BatchItem.custom_id, BatchItem.text, BatchItem.extra)
        .where(BatchItem.batch_id == batch_id, BatchItem.chunk == seq, BatchItem.status == "queued")
        .order_by(BatchItem.idx))]
    return ChunkWork(batch_id=batch_id, seq=seq, attempt=attempt, owner_id=b.owner_id, model=b.model,
                     task=dict(b.task), params=dict(b.params), items=items)  # type: ignore[arg-type]


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
        if res.rowcount == 1:
            if r.error_code:
                bad += 1
            else:
                ok += 1
    if ok or bad:
        session.execute(update(Batch).where(Batch.id == batch_id)
                        .values(completed=Batch.completed + ok, failed=Batch.failed + bad))
    return ok, bad


def finish_chunk(*, session: Session, batch_id: str, seq: int, attempt: int, results: list[ItemResult],
                 hand_back: bool = False) -> bool:
    """Store a chunk's results; the chunk is done, or back in the queue when the worker is stopping."""
    store_results(session=session, batch_id=batch_id, results=results)
    values: dict[str, Any] = ({"status": "queued", "worker_id": None, "sent_at": None} if hand_back
                              else {"status": "done"})
    res = session.execute(update(BatchChunk).where(
        BatchChunk.batch_id == batch_id, BatchChunk.seq == seq, BatchChunk.status == "running",
        BatchChunk.attempts == attempt).values(**values))
    return res.rowcount == 1


def finalize(*, db: Database, settings: Settings, batch_id: str) -> bool:
    """Once no chunk is queued or running: write the output and error files, move the batch to its final
    state. Claimed compare-and-set (`finalizing_at`), committed compare-and-set: it happens once."""
    open_chunks = exists().where(BatchChunk.batch_id == batch_id, BatchChunk.status.in_(OPEN_CHUNK))
    claim_at = utcnow()
    with db.session() as session:
        res = session.execute(update(Batch).where(
            Batch.id == batch_id, Batch.status.in_(ACTIVE_BATCH), Batch.finalizing_at.is_(None), ~open_chunks)
            .values(finalizing_at=claim_at))
        if res.rowcount != 1:
            return False
        b = session.get(Batch, batch_id)
        assert b is not None
        owner_id = b.owner_id
    out_id, err_id = files.new_file_id(), files.new_file_id()
    out = files.FileWriter(settings, out_id)
    err = files.FileWriter(settings, err_id)
    n_err = 0
    try:
        with db.session() as session:
            stmt = (select(BatchItem.custom_id, BatchItem.status, BatchItem.output, BatchItem.error_code,
                           BatchItem.error_message)
                    .where(BatchItem.batch_id == batch_id, BatchItem.status.in_(("succeeded", "failed")))
                    .order_by(BatchItem.idx).execution_options(yield_per=2000))
            for cid, status, output, code, message in session.execute(stmt):
                error = {"code": code, "message": message} if status == "failed" else None
                line = json.dumps({"custom_id": cid, "output": output if status == "succeeded" else None,
                                   "error": error}, ensure_ascii=False) + "\n"
                out.write(line.encode())
                if error:
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
        if b.status == JobStatus.cancelling.value:
            final, code, msg = JobStatus.cancelled, "cancelled", "cancelled by the user"
        elif b.total and b.failed == b.total:
            final, code, msg = JobStatus.failed, "all_documents_failed", "every document failed; see the error file"
        else:
            final, code, msg = JobStatus.succeeded, None, None
        values: dict[str, Any] = {"status": final.value, "finished_at": utcnow(), "output_file_id": out_id,
                                  "error_file_id": err_id if err_path else None, "error_code": code,
                                  "error_message": msg}
        res = session.execute(update(Batch).where(
            Batch.id == batch_id, Batch.status == b.status, Batch.finalizing_at == claim_at,
            Batch.output_file_id.is_(None)).values(**values))
        if res.rowcount != 1:  # cancelled meanwhile: release the claim and write the files again
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
        webhooks.batch_event(session, batch_id, f"batch.{final.value}")  # in the transaction that ends it
    log.info("batch=%s state=%s output=%s errors=%d", batch_id, final.value, out_id, n_err)
    return True


# ---- reconciler ----------------------------------------------------------------------------------------


def recover_chunks(*, db: Database, settings: Settings, dead: set[str], alive: frozenset[str] = frozenset()
                   ) -> int:
    """Running chunks of dead workers, or running longer than batch_chunk_timeout_s, go back to the queue (or,
    out of attempts, their unfinished documents fail with worker_lost). Stuck finalisations are released and
    batches with nothing left open are finalised."""
    timeout_cutoff = utcnow() - timedelta(seconds=settings.batch_chunk_timeout_s)
    with db.session() as session:
        rows = session.execute(select(BatchChunk.batch_id, BatchChunk.seq, BatchChunk.attempts,
                                      BatchChunk.worker_id, BatchChunk.claimed_at)
                               .where(BatchChunk.status == "running")).all()
    moved = 0
    touched: set[str] = set()
    for batch_id, seq, attempts, worker_id, claimed_at in rows:
        lost = worker_id in dead and worker_id not in alive
        if claimed_at is not None:
            cutoff = timeout_cutoff.replace(tzinfo=None) if claimed_at.tzinfo is None else timeout_cutoff
            lost = lost or claimed_at < cutoff
        if not lost:
            continue
        with db.session() as session:
            guard = and_(BatchChunk.batch_id == batch_id, BatchChunk.seq == seq, BatchChunk.status == "running",
                         BatchChunk.attempts == attempts)
            if attempts >= MAX_CHUNK_ATTEMPTS:
                if session.execute(update(BatchChunk).where(guard).values(status="done")).rowcount:
                    idxs = session.scalars(select(BatchItem.idx).where(
                        BatchItem.batch_id == batch_id, BatchItem.chunk == seq, BatchItem.status == "queued"))
                    msg = f"the worker processing this document was lost {attempts} times"
                    store_results(session=session, batch_id=batch_id,
                                  results=[ItemResult(i, error_code="worker_lost", error_message=msg) for i in idxs])
                    touched.add(batch_id)
            elif session.execute(update(BatchChunk).where(guard).values(
                    status="queued", worker_id=None, sent_at=None)).rowcount:
                log.warning("batch=%s chunk=%d worker_lost worker=%s re-queued attempt=%d", batch_id, seq,
                            worker_id, attempts + 1)
                moved += 1
    stale = utcnow() - timedelta(seconds=FINALIZE_STALE_S)
    nothing_open = ~exists().where(BatchChunk.batch_id == Batch.id, BatchChunk.status.in_(OPEN_CHUNK))
    # batches with nothing left to run but not final get finalised; a claim gone stale means its finaliser died
    with db.session() as session:
        rows2 = session.execute(select(Batch.id, Batch.finalizing_at)
                                .where(Batch.status.in_(ACTIVE_BATCH), nothing_open)).all()
        for batch_id, fin in rows2:
            if fin is not None and fin < (stale.replace(tzinfo=None) if fin.tzinfo is None else stale):
                session.execute(update(Batch).where(Batch.id == batch_id, Batch.finalizing_at == fin)
                                .values(finalizing_at=None))
            touched.add(batch_id)
    for batch_id in touched:
        finalize(db=db, settings=settings, batch_id=batch_id)
    return moved


def republish_stranded(*, db: Database, queue_depth: Any, older_than_s: float) -> int:
    """Queued chunks published long ago whose queue is empty lost their message: mark them unsent for the relay."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as session:
        rows = session.execute(
            select(BatchChunk.batch_id, BatchChunk.seq, BatchChunk.sent_at, Batch.queue)
            .join(Batch, Batch.id == BatchChunk.batch_id)
            .where(BatchChunk.status == "queued", BatchChunk.sent_at.is_not(None)).limit(5000)).all()
    depth: dict[str, int | None] = {}
    count = 0
    with db.session() as session:
        for batch_id, seq, sent_at, queue in rows:
            if sent_at >= (cutoff.replace(tzinfo=None) if sent_at.tzinfo is None else cutoff):
                continue
            if queue not in depth:
                depth[queue] = queue_depth(queue)
            if depth[queue] != 0:
                continue
            count += session.execute(update(BatchChunk).where(
                BatchChunk.batch_id == batch_id, BatchChunk.seq == seq, BatchChunk.status == "queued",
                BatchChunk.sent_at == sent_at).values(sent_at=None)).rowcount
    if count:
        log.warning("reconciler re-queued %d stranded batch chunk(s)", count)
    return count


def reconcile(*, db: Database, settings: Settings, queue_depth: Any, alive: frozenset[str] = frozenset()) -> int:
    """One reconciler pass over batches (every worker runs one; all steps are compare-and-set)."""
    from app.services.reconciler import dead_workers

    dead = dead_workers(db=db, stale_after_s=settings.worker_lost_after_s)
    moved = recover_chunks(db=db, settings=settings, dead=dead, alive=alive)
    republish_stranded(db=db, queue_depth=queue_depth, older_than_s=settings.republish_after_s)
    return moved
