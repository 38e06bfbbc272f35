"""The worker side of each job kind: one module per kind with `run(ctx, rt) -> Outcome`, named by the kind's
declaration (app.jobs.kinds.JobKind.handler). Handlers know no HTTP and hold no database session while they run;
they raise workers.errors.JobFailure for a failure a user should see."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.model_cache import ModelSpec

if TYPE_CHECKING:
    import threading

    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class JobContext:
    """A detached copy of what a handler may read; no database session is held while it runs."""

    id: str
    kind: str
    model: ModelSpec | None
    input: dict[str, Any]
    params: dict[str, Any]
    timeout_s: int
    started: float  # time.monotonic() when the worker claimed it
    cancel: threading.Event
    progress: Callable[..., None] = lambda done, total, message=None, **metrics: None  # noqa: E731 - job.progress
    attempt: int = 1
    owner_id: int = 0
    batch_id: str | None = None

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s


@dataclass(frozen=True)
class Outcome:
    """A handler's success: the job's output and usage, and `also`, more writes that commit with it (the
    model a fine-tune registers, a chunk's documents)."""

    output: dict[str, Any]
    usage: dict[str, Any]
    also: Callable[[Session], None] | None = None


def wait_reporting(future: Future[Any], ctx: JobContext, total: int, produced: Callable[[], int],
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


def prompt_ids(loaded: Any, inp: dict[str, Any]) -> list[int]:
    """The token ids of a generate input: chat messages through the model's chat template, or a prompt."""
    from workers.errors import JobFailure

    tok = loaded.tokenizer
    if "messages" in inp:
        if not tok.chat_template:
            raise JobFailure("invalid_input", f"model {loaded.name!r} has no chat template; send input.prompt")
        text = tok.apply_chat_template(inp["messages"], add_generation_prompt=True, tokenize=False)
        ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(inp["prompt"])["input_ids"]
    if not ids:
        raise JobFailure("invalid_input", "the prompt is empty after tokenisation")
    return ids
