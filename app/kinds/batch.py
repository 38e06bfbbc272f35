"""batch: one chunk of a batch's documents (internal: POST /batches makes these, never POST /jobs).

A chunk is a job whose parent is its batch (jobs.batch_id): claimed, run, stored and recovered by the core like
any other job. Its input names the chunk; the documents and the task live in the batch's rows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.kinds import JobKind


class ChunkInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0, description="the chunk's number within its batch")


class ChunkParams(BaseModel):
    model_config = ConfigDict(extra="allow")  # the batch's task parameters


class ChunkOutput(BaseModel):
    completed: int
    failed: int


KIND = JobKind(
    name="batch",
    description="A chunk of a batch's documents, run through the model together (made by POST /batches).",
    input=ChunkInput,
    params=ChunkParams,
    output=ChunkOutput,
    model_kind=None,  # the batch's task decides (causal-lm or embedding); checked when the batch is submitted
    handler="workers.kinds.batch:run",
    public=False,
    cancellable=False,  # a running chunk finishes; a cancelled batch drops the chunks not started
)
