"""classify: texts through a fine-tuned classifier's engine (batched there with other jobs' texts)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workers.engines.encoder import EncoderEngine
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    assert ctx.model is not None
    engine = rt.cache.get(ctx.model).engine
    if not isinstance(engine, EncoderEngine) or engine.kind != "classifier":
        raise JobFailure("invalid_input", f"model {ctx.model.name!r} is not a text classifier")
    many = "texts" in ctx.input
    texts = ctx.input["texts"] if many else [ctx.input["text"]]
    top_k = ctx.params.get("top_k")
    results = []
    for scores in engine.classify(texts):
        kept = dict(list(scores.items())[:top_k]) if top_k else scores
        results.append({"label": next(iter(scores)), "scores": kept})
    usage = {"documents": len(texts), "seconds": round(time.monotonic() - ctx.started, 4)}
    return Outcome({"results": results} if many else results[0], usage)
