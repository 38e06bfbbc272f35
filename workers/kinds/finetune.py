"""The fine-tuning job handler: data from the job's files, a LoRA run on the trainer, progress, checkpoints and
resume through the database, the adapter saved where the registry will point."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from transformers import AutoTokenizer

from app.jobs import lifecycle
from app.models import Checkpoint, File
from app.services import datasets, finetunes
from workers import loaders
from workers.engines.finetune import Encoded, Hooks, LoraTrainer, encode
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger("llmos.worker")


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    assert ctx.model is not None
    with _training_slot(ctx, rt):
        output, usage = _train(ctx, rt)
    adapter = str(finetunes.job_dir(rt.platform.settings, ctx.id) / "adapter")
    return Outcome(output, usage, also=lambda s: finetunes.register_model(s, job_id=ctx.id, output=output,
                                                                          adapter_path=adapter))


@contextmanager
def _training_slot(ctx: JobContext, rt: WorkerRuntime) -> Iterator[None]:
    """At most `finetune_concurrency` trainings per worker; a job waiting for the slot can still be cancelled."""
    told = False
    while not rt.training_slot.acquire(timeout=1.0):
        if ctx.cancel.is_set():
            raise JobFailure("cancelled", "cancelled while waiting for a training slot")
        if not told:
            ctx.progress(0, 1, "waiting for this worker's training slot")
            told = True
    try:
        yield
    finally:
        rt.training_slot.release()


def _event(rt: WorkerRuntime, job_id: str, type_: str, message: str, **data: Any) -> None:
    with rt.platform.db.session() as session:
        lifecycle.add_event(session, job_id, type_, message, **data)


def _dataset(rt: WorkerRuntime, ctx: JobContext, field: str, tok: Any) -> list[Encoded]:
    file_id = ctx.input.get(field)
    if file_id is None:
        return []
    with rt.platform.db.session() as session:
        row = session.get(File, file_id)
        path = Path(row.path) if row is not None else None
    if path is None or not path.exists():
        raise JobFailure("invalid_input", f"{field} {file_id} no longer exists")
    try:
        examples = [obj for _, obj in datasets.read_examples(path)]
    except datasets.DatasetError as exc:
        raise JobFailure("invalid_input", f"{field} {file_id}: {exc}") from None
    max_len = ctx.params["max_seq_len"]
    encoded = [encode(tok, ex, max_len) for ex in examples]
    usable = [e for e in encoded if e.trained_tokens]
    if not usable:
        raise JobFailure("invalid_input", f"{field} {file_id}: no example has a token to learn within "
                         f"max_seq_len={max_len}")
    _event(rt, ctx.id, "dataset", f"{field}: {len(usable)} examples",
           file=file_id, examples=len(usable), truncated=sum(e.truncated for e in encoded),
           skipped=len(encoded) - len(usable), tokens=sum(len(e.input_ids) for e in usable),
           trained_tokens=sum(e.trained_tokens for e in usable))
    return usable


def _train(ctx: JobContext, rt: WorkerRuntime) -> tuple[dict[str, Any], dict[str, Any]]:
    assert ctx.model is not None
    settings = rt.platform.settings
    base_path = loaders.materialise(name=ctx.model.name, source_type=ctx.model.source_type,
                                    source=ctx.model.source, config=ctx.model.config, model_dir=settings.model_dir)
    tok = AutoTokenizer.from_pretrained(base_path)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train = _dataset(rt, ctx, "training_file", tok)
    valid = _dataset(rt, ctx, "validation_file", tok)
    trainer = LoraTrainer(base_path=base_path, device=rt.hardware.device, params=ctx.params, train=train,
                          valid=valid, pad_id=pad_id)
    with rt.platform.db.session() as session:
        last = finetunes.latest_checkpoint(session=session, job_id=ctx.id)
        last_path, last_step = (Path(last.path), last.step) if last is not None else (None, 0)
    if last_path is not None:
        trainer.resume(last_path)
        _event(rt, ctx.id, "resumed", f"resumed from the checkpoint at step {last_step}/{trainer.total_steps}",
               step=last_step, attempt=ctx.attempt)
        log.info("job=%s resumed at step %d of %d", ctx.id, last_step, trainer.total_steps)
    root = finetunes.job_dir(settings, ctx.id)
    saved = {"step": trainer.step}  # the step of the newest checkpoint on disk (0: none)

    def stop() -> str | None:
        if ctx.cancel.is_set():
            return "cancelled"
        if time.monotonic() > ctx.deadline:
            return "timeout"
        return None

    def log_metrics(m: dict[str, Any]) -> None:
        loss = f", valid_loss {m['valid_loss']:.4f}" if "valid_loss" in m else ""
        ctx.progress(m["step"], m["total_steps"], f"step {m['step']}/{m['total_steps']}: train_loss "
                     f"{m['train_loss']:.4f}{loss}, {m['tokens_per_second']} tokens/s", **m)

    def checkpoint(reason: str) -> None:
        if trainer.step == saved["step"]:
            return  # nothing new since the last one
        if reason == "cancelled" and rt.handing_back(ctx.id):
            reason = "stopping"
        path = root / "checkpoints" / f"step-{trainer.step:06d}-attempt-{ctx.attempt}"
        trainer.save(path)
        saved["step"] = trainer.step
        metrics = {k: trainer.last_metrics[k] for k in ("train_loss", "valid_loss") if k in trainer.last_metrics}
        with rt.platform.db.session() as session:
            pruned = finetunes.add_checkpoint(
                session=session, job_id=ctx.id, attempt=ctx.attempt, step=trainer.step,
                total_steps=trainer.total_steps, epoch=trainer.epoch_of(trainer.step), reason=reason,
                path=str(path), metrics=metrics, keep=settings.finetune_keep_checkpoints)
        if pruned is None:
            shutil.rmtree(path, ignore_errors=True)
            raise JobFailure("worker_lost", "this attempt no longer owns the job; stopping")
        for old in pruned:
            shutil.rmtree(old, ignore_errors=True)

    _event(rt, ctx.id, "training", f"LoRA on {ctx.model.name}: {trainer.total_steps} steps, "
           f"{trainer.trainable_params} trainable parameters on {rt.hardware.device}",
           total_steps=trainer.total_steps, trainable_parameters=trainer.trainable_params,
           device=rt.hardware.device)
    metrics = trainer.run(Hooks(stop=stop, log=log_metrics, checkpoint=checkpoint))
    trainer.save_adapter(root / "adapter")
    with rt.platform.db.session() as session:
        ckpts = session.scalars(select(Checkpoint.id).where(Checkpoint.job_id == ctx.id)
                                .order_by(Checkpoint.step)).all()
    output = {
        "model": finetunes.model_name(ctx.model.name, ctx.params.get("suffix"), ctx.id),
        "base_model": ctx.model.name,
        "checkpoints": list(ckpts),
        "steps": trainer.step,
        "epochs": ctx.params["n_epochs"],
        "train_loss": metrics.get("train_loss"),
        "valid_loss": metrics.get("valid_loss"),
    }
    usage = {
        "trained_tokens": trainer.trained_tokens,
        "examples": len(train),
        "seconds": round(time.monotonic() - ctx.started, 4),
        "training_seconds": round(trainer.train_seconds, 4),
        "tokens_per_second": round(trainer.trained_tokens / trainer.train_seconds, 1) if trainer.train_seconds
        else None,
    }
    return output, usage
