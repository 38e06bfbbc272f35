"""rerank: documents ordered by their similarity to a query, scored with an embedding model (e.g. the packaged
all-minilm-l6-v2). The declaration is all the API needs (no torch here); the worker side is llmos_rerank.worker."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.kinds import JobKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RerankInput(_Strict):
    query: str = Field(min_length=1, max_length=20_000)
    documents: list[Annotated[str, Field(min_length=1, max_length=20_000)]] = Field(min_length=1, max_length=1000)


class RerankParams(_Strict):
    top_n: int | None = Field(None, ge=1, le=1000, description="return only the best n")


class Ranked(_Strict):
    index: int = Field(description="position in input.documents")
    score: float = Field(description="cosine similarity to the query, -1 to 1")
    document: str


class RerankOutput(_Strict):
    results: list[Ranked] = Field(description="best first")


KIND = JobKind(
    name="rerank",
    description="Documents ordered by similarity to a query (cosine of mean-pooled embeddings); plugin llmos-rerank.",
    input=RerankInput,
    params=RerankParams,
    output=RerankOutput,
    model_kind="embedding",
    handler="llmos_rerank.worker:run",
    cancellable=False,
)
