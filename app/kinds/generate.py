"""generate: text from a prompt or chat messages, on the batching generation engine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.errors import InvalidInput, TooLarge
from app.jobs.kinds import JobKind
from app.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateInput(_Strict):
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _one(self) -> GenerateInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of input.prompt or input.messages")
        return self

    def chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) for m in self.messages or [])


class GenerateParams(_Strict):
    max_new_tokens: int = Field(256, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=100_000)
    stop: list[str] = Field(default_factory=list, max_length=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=16, description="choices to generate (the engine runs them together)")
    stream: bool = Field(False, description="hand text to the API as it is generated (OpenAI's stream)")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: object) -> object:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list) and any(isinstance(s, str) and not (0 < len(s) <= 200) for s in v):
            raise ValueError("each stop string must be 1 to 200 characters")
        return v


class Choice(_Strict):
    text: str
    finish_reason: Literal["stop", "length"]


class GenerateOutput(_Strict):
    text: str
    finish_reason: Literal["stop", "length", "cancelled", "timeout"] = Field(
        description="cancelled / timeout: the job stopped, and this is what it had generated")
    choices: list[Choice] | None = Field(None, description="every choice when params.n > 1 (the first is text)")


def check_generate_params(params: BaseModel, settings: Settings) -> None:
    """Limits of generation parameters that depend on settings (jobs and batches alike)."""
    if not isinstance(params, GenerateParams):
        return
    if params.max_new_tokens > settings.max_new_tokens_limit:
        raise InvalidInput(
            f"params.max_new_tokens: at most {settings.max_new_tokens_limit}", field="params.max_new_tokens"
        )
    if params.min_new_tokens > params.max_new_tokens:
        raise InvalidInput("params.min_new_tokens: at most max_new_tokens", field="params.min_new_tokens")
    if params.stream and params.n > 1:
        raise InvalidInput("params.stream: streams one choice; leave n at 1", field="params.n")


def limits(inp: BaseModel, params: BaseModel, settings: Settings) -> None:
    assert isinstance(inp, GenerateInput)
    if inp.chars() > settings.max_prompt_chars:
        raise TooLarge(
            f"the prompt is {inp.chars()} characters; the limit is {settings.max_prompt_chars}",
            field="input.messages" if inp.messages else "input.prompt",
            code="prompt_too_large",
        )
    check_generate_params(params, settings)


KIND = JobKind(
    name="generate",
    description="Text from a prompt or chat messages (the model's chat template).",
    input=GenerateInput,
    params=GenerateParams,
    output=GenerateOutput,
    model_kind="causal-lm",
    handler="workers.kinds.generate:run",
    limits=limits,
)
