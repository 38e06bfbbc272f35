"""embed: one text, one vector, from an embedding model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.errors import TooLarge
from app.jobs.kinds import JobKind
from app.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedInput(_Strict):
    text: str = Field(min_length=1)


class EmbedParams(_Strict):
    normalize: bool = True


class EmbedOutput(_Strict):
    embedding: list[float]


def limits(inp: BaseModel, params: BaseModel, settings: Settings) -> None:
    assert isinstance(inp, EmbedInput)
    if len(inp.text) > settings.max_prompt_chars:
        raise TooLarge(f"the text is {len(inp.text)} characters; the limit is {settings.max_prompt_chars}",
                       field="input.text", code="prompt_too_large")


KIND = JobKind(
    name="embed",
    description="An embedding of one text (mean-pooled; normalised unless params.normalize is false).",
    input=EmbedInput,
    params=EmbedParams,
    output=EmbedOutput,
    model_kind="embedding",
    handler="workers.kinds.embed:run",
    limits=limits,
    cancellable=False,
)
