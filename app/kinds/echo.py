"""echo: no model, no torch. Its output is its input; params.sleep_s waits cooperatively (cancel and timeout
are honoured). For smoke tests, control-plane tests and the benchmarks of the platform's own overhead."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from app.jobs.kinds import JobKind


class EchoInput(RootModel[dict[str, Any]]):
    """Any JSON object."""


class EchoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sleep_s: float = Field(0.0, ge=0.0, le=60.0, description="seconds to wait before answering")


KIND = JobKind(
    name="echo",
    description="Returns its input as its output after params.sleep_s seconds; needs no model.",
    input=EchoInput,
    params=EchoParams,
    output=EchoInput,
    model_kind=None,
    handler="workers.kinds.echo:run",
)
