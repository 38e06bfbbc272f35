"""Job-kind handlers: one function per kind, from the job's input to (output, usage)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.engines.embedding import EmbeddingEngine
from workers.engines.generation import GenRequest
from workers.errors import JobFailure
from workers.model_cache import ModelSpec

if TYPE_CHECKING:
    import threading

    from workers.runtime import WorkerRuntime


@dataclass(frozen=True)
class JobContext:
    """A detached copy of what a handler may read; no database session is held while it runs."""

    id: str
    kind: str
    model: ModelSpec | None
    input: dict[str, Any]
    params: dict[str, Any]
    timeout_s: int
    started: float
    cancel: threading.Event
    progress: Callable[..., None] = lambda done, total, message=None, **metrics: None  # noqa: E731 - job.progress
    attempt: int = 1


def wait_reporting(future: Future, ctx: JobContext, total: int, produced: Callable[[], int],
                   every_s: float) -> Any:
    """Wait for an engine result from the task thread, reporting progress every `every_s` (never from the
    engine thread: a database write there would stall every request in the batch)."""
    last = -1
    while True:
        try:
            return future.result(timeout=every_s)
        except FutureTimeout:
            done = produced()
            if done != last:
                ctx.progress(done, total)
                last = done


Handler = Callable[[JobContext, "WorkerRuntime"], tuple[dict[str, Any], dict[str, Any]]]


def run_generate(ctx: JobContext, rt: WorkerRuntime) -> tuple[dict[str, Any], dict[str, Any]]:
    assert ctx.model is not None
    loaded = rt.cache.get(ctx.model)
    tok = loaded.tokenizer
    if "messages" in ctx.input:
        if not tok.chat_template:
            raise JobFailure("invalid_input", f"model {ctx.model.name!r} has no chat template; send input.prompt")
        text = tok.apply_chat_template(ctx.input["messages"], add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tok(ctx.input["prompt"])["input_ids"]
    if not prompt_ids:
        raise JobFailure("invalid_input", "the prompt is empty after tokenisation")
    p = ctx.params
    if loaded.max_positions and len(prompt_ids) + p["max_new_tokens"] > loaded.max_positions:
        raise JobFailure("invalid_input", f"prompt ({len(prompt_ids)} tokens) + max_new_tokens "
                         f"({p['max_new_tokens']}) exceeds the model's context of {loaded.max_positions}")
    req = GenRequest(
        prompt_ids=prompt_ids, max_new_tokens=p["max_new_tokens"], min_new_tokens=p.get("min_new_tokens", 0),
        temperature=p["temperature"],
        top_p=p["top_p"], top_k=p["top_k"], stop=p["stop"], seed=p.get("seed"),
        deadline=ctx.started + ctx.timeout_s, cancel=ctx.cancel, adapter=loaded.adapter,
    )
    res = wait_reporting(loaded.engine.submit(req), ctx, req.max_new_tokens, lambda: req.produced,
                         rt.platform.settings.progress_interval_s)
    seconds = time.monotonic() - ctx.started
    usage = {
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "total_tokens": res.prompt_tokens + res.completion_tokens,
        "seconds": round(seconds, 4),
        "generation_seconds": round(res.seconds, 4),
        "tokens_per_second": round(res.completion_tokens / res.seconds, 2) if res.seconds else None,
        "batch_size": res.batch_size,
    }
    return {"text": res.text, "finish_reason": res.finish_reason}, usage


def run_embed(ctx: JobContext, rt: WorkerRuntime) -> tuple[dict[str, Any], dict[str, Any]]:
    assert ctx.model is not None
    engine = rt.cache.get(ctx.model).engine
    if not isinstance(engine, EmbeddingEngine):
        raise JobFailure("invalid_input", f"model {ctx.model.name!r} is not an embedding model")
    vectors, tokens = engine.embed([ctx.input["text"]], normalize=ctx.params.get("normalize", True))
    usage = {"prompt_tokens": tokens[0], "total_tokens": tokens[0],
             "seconds": round(time.monotonic() - ctx.started, 4)}
    return {"embedding": vectors[0]}, usage


from workers.finetune import run_finetune  # noqa: E402 - it needs JobContext from above

HANDLERS: dict[str, Handler] = {"generate": run_generate, "embed": run_embed, "finetune": run_finetune}
