"""ner: a fine-tuned token classifier (a `finetune` job with method token_classification) finds the entities of
one text or many: type, text and character offsets."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.kinds import JobKind
from app.kinds.classify import TextsInput, text_limits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NerParams(_Strict):
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="leave out entities scored lower")


class Entity(_Strict):
    type: str
    text: str = Field(description="input text[start:end]")
    start: int = Field(description="offset of the first character, in Unicode code points")
    end: int = Field(description="offset just past the last character")
    score: float = Field(description="mean probability of the entity's word tags")


class Entities(_Strict):
    entities: list[Entity]


class NerOutput(_Strict):
    entities: list[Entity] | None = Field(None, description="for input.text")
    results: list[Entities] | None = Field(None, description="for input.texts, in their order")


KIND = JobKind(
    name="ner",
    description="Named entities (type, text, start, end, score) of one text (input.text -> output.entities) or "
                "many (input.texts -> output.results), from a fine-tuned token classifier.",
    input=TextsInput,
    params=NerParams,
    output=NerOutput,
    model_kind="token-classifier",
    handler="workers.kinds.ner:run",
    limits=text_limits,
    cancellable=False,
)
