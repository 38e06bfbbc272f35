"""generate: one request (or n choices) handed to the model's batching engine, progress reported from the task
thread; a streaming job's text is published as it grows (app.jobs.signals TOKENS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.jobs.signals import token_notes
from workers import kinds
from workers.engines.generation import GenRequest
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome, wait_reporting

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


class TextStream:
    """Called by the engine with the tokens so far; publishes the text that is final: held back are a possibly
    unfinished character (a byte-level token may end mid-character) and as many characters as a stop string
    could still claim, so that what a client has seen is always a prefix of the job's output."""

    def __init__(self, job_id: str, tokenizer: Any, stop: list[str],
                 publish: Callable[[list[tuple[str, str]]], None]) -> None:
        self.job_id, self.tokenizer, self.stop, self.publish = job_id, tokenizer, stop, publish
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = 0
        self.done = False

    def __call__(self, tokens: list[int]) -> None:
        if self.done:
            return
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        upto = len(text) - self.hold
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            upto, self.done = cut, True
        while upto > self.sent and text[upto - 1] == "\ufffd":  # an unfinished character: wait for its bytes
            upto -= 1
        if upto > self.sent:
            self.publish(token_notes(self.job_id, self.sent, text[self.sent:upto]))
            self.sent = upto


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    assert ctx.model is not None
    loaded = rt.cache.get(ctx.model)
    tok = loaded.tokenizer
    prompt_ids = kinds.prompt_ids(loaded, ctx.input)
    p = ctx.params
    if loaded.max_positions and len(prompt_ids) + p["max_new_tokens"] > loaded.max_positions:
        raise JobFailure("invalid_input", f"prompt ({len(prompt_ids)} tokens) + max_new_tokens "
                         f"({p['max_new_tokens']}) exceeds the model's context of {loaded.max_positions}")
    n = int(p.get("n", 1))
    seed = p.get("seed")
    reqs = [GenRequest(
        prompt_ids=prompt_ids, max_new_tokens=p["max_new_tokens"], min_new_tokens=p.get("min_new_tokens", 0),
        temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"], stop=p["stop"],
        seed=None if seed is None else seed + i, deadline=ctx.deadline, cancel=ctx.cancel, adapter=loaded.adapter,
    ) for i in range(n)]
    if p.get("stream"):
        reqs[0].on_token = TextStream(ctx.id, tok, p["stop"], rt.platform.bus.publish)
    futures = [loaded.engine.submit(r) for r in reqs]
    total = sum(r.max_new_tokens for r in reqs)
    results = [wait_reporting(f, ctx, total, lambda: sum(r.produced for r in reqs),
                              rt.platform.settings.progress_interval_s) for f in futures]
    seconds = time.monotonic() - ctx.started
    completion = sum(r.completion_tokens for r in results)
    gen_seconds = max(r.seconds for r in results)
    usage = {
        "prompt_tokens": results[0].prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": results[0].prompt_tokens + completion,
        "seconds": round(seconds, 4),
        "generation_seconds": round(gen_seconds, 4),
        "tokens_per_second": round(completion / gen_seconds, 2) if gen_seconds else None,
        "batch_size": results[0].batch_size,
    }
    output: dict[str, Any] = {"text": results[0].text, "finish_reason": results[0].finish_reason}
    if n > 1:
        output["choices"] = [{"text": r.text, "finish_reason": r.finish_reason} for r in results]
    return Outcome(output, usage)
