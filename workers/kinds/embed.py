"""embed: one text (or many, in padded batches) through the embedding engine."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workers.engines.embedding import EmbeddingEngine
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    assert ctx.model is not None
    engine = rt.cache.get(ctx.model).engine
    if not isinstance(engine, EmbeddingEngine):
        raise JobFailure("invalid_input", f"model {ctx.model.name!r} is not an embedding model")
    many = "texts" in ctx.input
    vectors, tokens = engine.embed(ctx.input["texts"] if many else [ctx.input["text"]],
                                   normalize=ctx.params.get("normalize", True))
    usage = {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens),
             "seconds": round(time.monotonic() - ctx.started, 4)}
    return Outcome({"embeddings": vectors} if many else {"embedding": vectors[0]}, usage)
