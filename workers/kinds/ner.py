"""ner: texts through a fine-tuned token classifier's engine (batched there with other jobs' texts)."""

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
    if not isinstance(engine, EncoderEngine) or engine.kind != "token-classifier":
        raise JobFailure("invalid_input", f"model {ctx.model.name!r} is not a token classifier")
    many = "texts" in ctx.input
    texts = ctx.input["texts"] if many else [ctx.input["text"]]
    floor = ctx.params.get("min_score", 0.0)
    results = [[e for e in ents if e["score"] >= floor] for ents in engine.entities(texts)]
    usage = {"documents": len(texts), "seconds": round(time.monotonic() - ctx.started, 4)}
    return Outcome({"results": [{"entities": e} for e in results]} if many else {"entities": results[0]}, usage)
