"""The fine-tuning job handler: data from the job's files, a LoRA run on the trainer, progress, checkpoints and
resume through the database, the adapter saved where the registry will point."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from transformers import AutoTokenizer

from app.jobs import lifecycle
from app.models import Checkpoint, File
from app.services import datasets, finetunes
from workers import loaders
from workers.engines.encoder_finetune import EncoderTrainer, encode_tagged, encode_text, tag_names
from workers.engines.finetune import Encoded, Hooks, LoraTrainer, encode
from workers.engines.locks import in_own_thread
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger("llmos.worker")

METRICS = ("accuracy", "macro_f1", "precision", "recall", "f1")  # an encoder's validation metrics


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    assert ctx.model is not None
    with _training_slot(ctx, rt):
        output, usage = in_own_thread(lambda: _train(ctx, rt), name=f"llmos-train-{ctx.id}")
    saved = str(_saved_dir(rt, ctx))
    return Outcome(output, usage, also=lambda s: finetunes.register_model(s, job_id=ctx.id, output=output,
                                                                          adapter_path=saved))


def _saved_dir(rt: WorkerRuntime, ctx: JobContext) -> Path:
    """Where the result goes: a LoRA adapter for a causal LM, a whole model directory for an encoder."""
    name = "adapter" if ctx.params.get("method", "lora") == "lora" else "model"
    return finetunes.job_dir(rt.platform.settings, ctx.id) / name


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


def _examples(rt: WorkerRuntime, ctx: JobContext, field: str) -> list[dict[str, Any]]:
    file_id = ctx.input.get(field)
    if file_id is None:
        return []
    with rt.platform.db.session() as session:
        row = session.get(File, file_id)
        path = Path(row.path) if row is not None else None
    if path is None or not path.exists():
        raise JobFailure("invalid_input", f"{field} {file_id} no longer exists")
    try:
        return [obj for _, obj in datasets.read_examples(path, ctx.params.get("method", "lora"))]
    except datasets.DatasetError as exc:
        raise JobFailure("invalid_input", f"{field} {file_id}: {exc}") from None


def _dataset(rt: WorkerRuntime, ctx: JobContext, field: str, examples: list[dict[str, Any]],
             enc: Callable[[dict[str, Any]], Encoded]) -> list[Encoded]:
    if not examples:
        return []
    file_id, max_len = ctx.input[field], ctx.params["max_seq_len"]
    encoded = [enc(ex) for ex in examples]
    usable = [e for e in encoded if e.trained_tokens]
    if not usable:
        raise JobFailure("invalid_input", f"{field} {file_id}: no example has a token to learn within "
                         f"max_seq_len={max_len}")
    _event(rt, ctx.id, "dataset", f"{field}: {len(usable)} examples",
           file=file_id, examples=len(usable), truncated=sum(e.truncated for e in encoded),
           skipped=len(encoded) - len(usable), tokens=sum(len(e.input_ids) for e in usable),
           trained_tokens=sum(e.trained_tokens for e in usable))
    return usable


def _trainer(ctx: JobContext, rt: WorkerRuntime, base_path: Path, tok: Any) -> tuple[LoraTrainer, list[str] | None]:
    """The trainer for the job's method, on its encoded datasets; and the labels an encoder learns."""
    method, max_len = ctx.params.get("method", "lora"), ctx.params["max_seq_len"]
    train_ex, valid_ex = _examples(rt, ctx, "training_file"), _examples(rt, ctx, "validation_file")
    if method == "lora":
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        train = _dataset(rt, ctx, "training_file", train_ex, lambda ex: encode(tok, ex, max_len))
        valid = _dataset(rt, ctx, "validation_file", valid_ex, lambda ex: encode(tok, ex, max_len))
        return LoraTrainer(base_path=base_path, device=rt.hardware.device, params=ctx.params, train=train,
                           valid=valid, pad_id=pad_id), None
    seen = {f: tuple(sorted({x for ex in exs for x in datasets.labels_of(ex, method)}))
            for f, exs in (("training_file", train_ex), ("validation_file", valid_ex)) if exs}
    try:
        finetunes.check_labels(method, seen)
    except datasets.DatasetError as exc:
        raise JobFailure("invalid_input", str(exc)) from None
    found = list(seen["training_file"])
    labels = found if method == "classification" else tag_names(found)
    ids = {label: i for i, label in enumerate(labels)}
    max_len = min(max_len, tok.model_max_length)
    enc = encode_text if method == "classification" else encode_tagged
    train = _dataset(rt, ctx, "training_file", train_ex, lambda ex: enc(tok, ex, ids, max_len))
    valid = _dataset(rt, ctx, "validation_file", valid_ex, lambda ex: enc(tok, ex, ids, max_len))
    return EncoderTrainer(base_path=base_path, device=rt.hardware.device, params=ctx.params, train=train,
                          valid=valid, pad_id=tok.pad_token_id or 0, labels=labels), found


def _train(ctx: JobContext, rt: WorkerRuntime) -> tuple[dict[str, Any], dict[str, Any]]:
    assert ctx.model is not None
    settings = rt.platform.settings
    base_path = loaders.materialise(name=ctx.model.name, source_type=ctx.model.source_type,
                                    source=ctx.model.source, config=ctx.model.config, model_dir=settings.model_dir)
    tok = AutoTokenizer.from_pretrained(base_path)
    trainer, labels = _trainer(ctx, rt, base_path, tok)
    method = ctx.params.get("method", "lora")
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
        scores = {k: m[k] for k in METRICS if k in m}
        if scores:  # an encoder's validation at an epoch's end
            _event(rt, ctx.id, "metrics", f"epoch {m['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                             scores.items()),
                   epoch=m["epoch"], step=m["step"], valid_loss=m.get("valid_loss"), **scores)

    def checkpoint(reason: str) -> None:
        if trainer.step == saved["step"]:
            return  # nothing new since the last one
        if reason == "cancelled" and rt.handing_back(ctx.id):
            reason = "stopping"
        path = root / "checkpoints" / f"step-{trainer.step:06d}-attempt-{ctx.attempt}"
        trainer.save(path)
        saved["step"] = trainer.step
        metrics = {k: trainer.last_metrics[k] for k in ("train_loss", "valid_loss", *METRICS)
                   if k in trainer.last_metrics}
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

    what = "LoRA" if method == "lora" else f"{method} ({ctx.params.get('tuning') or 'full'})"
    _event(rt, ctx.id, "training", f"{what} on {ctx.model.name}: {trainer.total_steps} steps, "
           f"{trainer.trainable_params} trainable parameters on {rt.hardware.device}",
           total_steps=trainer.total_steps, trainable_parameters=trainer.trainable_params,
           device=rt.hardware.device)
    metrics = trainer.run(Hooks(stop=stop, log=log_metrics, checkpoint=checkpoint))
    if isinstance(trainer, EncoderTrainer):
        trainer.save_model(_saved_dir(rt, ctx), tok)
    else:
        trainer.save_adapter(_saved_dir(rt, ctx))
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
        "method": method,
    }
    if labels is not None:
        output["labels"] = labels
        output["metrics"] = {k: metrics[k] for k in METRICS if k in metrics} or None
    usage = {
        "trained_tokens": trainer.trained_tokens,
        "examples": len(trainer.train),
        "seconds": round(time.monotonic() - ctx.started, 4),
        "training_seconds": round(trainer.train_seconds, 4),
        "tokens_per_second": round(trainer.trained_tokens / trainer.train_seconds, 1) if trainer.train_seconds
        else None,
    }
    return output, usage
