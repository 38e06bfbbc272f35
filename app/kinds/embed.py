"""embed: one text, one vector, from an embedding model."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import TooLarge
from app.jobs.kinds import JobKind
from app.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedInput(_Strict):
    text: str | None = Field(None, min_length=1)
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _one(self) -> EmbedInput:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of input.text or input.texts")
        return self

    def all(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class EmbedParams(_Strict):
    normalize: bool = True


class EmbedOutput(_Strict):
    embedding: list[float] | None = Field(None, description="for input.text")
    embeddings: list[list[float]] | None = Field(None, description="for input.texts, in their order")


def limits(inp: BaseModel, params: BaseModel, settings: Settings) -> None:
    assert isinstance(inp, EmbedInput)
    for i, text in enumerate(inp.all()):
        if len(text) > settings.max_prompt_chars:
            raise TooLarge(f"the text is {len(text)} characters; the limit is {settings.max_prompt_chars}",
                           field="input.text" if inp.text is not None else f"input.texts.{i}",
                           code="prompt_too_large")


KIND = JobKind(
    name="embed",
    description="Embeddings of one text (input.text) or many (input.texts); mean-pooled, normalised unless "
                "params.normalize is false.",
    input=EmbedInput,
    params=EmbedParams,
    output=EmbedOutput,
    model_kind="embedding",
    handler="workers.kinds.embed:run",
    limits=limits,
    cancellable=False,
)
