"""The worker side of rerank: the query and the documents embedded in one call to the model's engine."""

from __future__ import annotations

import time
from typing import Any

from workers.engines.embedding import EmbeddingEngine
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome


def rank(engine: EmbeddingEngine, query: str, documents: list[str], top_n: int | None = None) -> list[dict[str, Any]]:
    vectors, _tokens = engine.embed([query, *documents], normalize=True)
    q = vectors[0]
    scores = [sum(a * b for a, b in zip(q, v, strict=True)) for v in vectors[1:]]
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]
    return [{"index": i, "score": round(scores[i], 6), "document": documents[i]} for i in order]


def run(ctx: JobContext, rt: Any) -> Outcome:
    assert ctx.model is not None
    engine = rt.cache.get(ctx.model).engine
    if not isinstance(engine, EmbeddingEngine):
        raise JobFailure("invalid_input", f"model {ctx.model.name!r} is not an embedding model")
    results = rank(engine, ctx.input["query"], ctx.input["documents"], ctx.params.get("top_n"))
    return Outcome({"results": results}, {"documents": len(ctx.input["documents"]),
                                          "seconds": round(time.monotonic() - ctx.started, 4)})
