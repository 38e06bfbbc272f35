"""classify: a fine-tuned text classifier (a `finetune` job with method classification) labels one text or many."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import TooLarge
from app.jobs.kinds import JobKind
from app.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsInput(_Strict):
    """One text (`text`) or many (`texts`, up to 2,048; run through the model together)."""

    text: str | None = Field(None, min_length=1)
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _one(self) -> TextsInput:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of input.text or input.texts")
        return self

    def all(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class ClassifyParams(_Strict):
    top_k: int | None = Field(None, ge=1, le=1000, description="keep only the k most likely labels in scores")


class Classification(_Strict):
    label: str = Field(description="the most likely label")
    scores: dict[str, float] = Field(description="probability of each label, highest first")


class ClassifyOutput(_Strict):
    label: str | None = Field(None, description="for input.text: the most likely label")
    scores: dict[str, float] | None = Field(None, description="for input.text: each label's probability")
    results: list[Classification] | None = Field(None, description="for input.texts, in their order")


def text_limits(inp: BaseModel, params: BaseModel, settings: Settings) -> None:
    assert isinstance(inp, TextsInput)
    for i, text in enumerate(inp.all()):
        if len(text) > settings.max_prompt_chars:
            raise TooLarge(f"the text is {len(text)} characters; the limit is {settings.max_prompt_chars}",
                           field="input.text" if inp.text is not None else f"input.texts.{i}",
                           code="prompt_too_large")


KIND = JobKind(
    name="classify",
    description="Labels with probabilities for one text (input.text -> output.label, output.scores) or many "
                "(input.texts -> output.results), from a fine-tuned classifier.",
    input=TextsInput,
    params=ClassifyParams,
    output=ClassifyOutput,
    model_kind="classifier",
    handler="workers.kinds.classify:run",
    limits=text_limits,
    cancellable=False,
)
