"""finetune: a LoRA adapter trained on a causal LM from JSONL files; the new model is registered for its owner
in the transaction that marks the job succeeded. Checkpoints let a new attempt resume where the last stopped."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.kinds import JobKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraParams(_Strict):
    r: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64,
                                             description="module names to adapt; default every linear layer")


class FinetuneInput(_Strict):
    training_file: str = Field(min_length=1, max_length=40)
    validation_file: str | None = Field(None, min_length=1, max_length=40)


class FinetuneParams(_Strict):
    method: Literal["lora"] = "lora"
    lora: LoraParams = Field(default_factory=LoraParams)
    n_epochs: int = Field(3, ge=1, le=1000)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=1024)
    max_seq_len: int = Field(1024, ge=8, le=131_072)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    log_every_steps: int = Field(10, ge=1, description="a progress event with losses every this many steps")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="checkpoints besides one per epoch")


class FinetuneOutput(_Strict):
    model: str
    base_model: str
    checkpoints: list[str]
    steps: int
    epochs: int
    train_loss: float | None
    valid_loss: float | None


KIND = JobKind(
    name="finetune",
    description="LoRA fine-tuning of a causal LM on JSONL training data; output.model is the new model.",
    input=FinetuneInput,
    params=FinetuneParams,
    output=FinetuneOutput,
    model_kind="causal-lm",
    handler="workers.kinds.finetune:run",
    default_timeout_s=24 * 3600,
    resumable=True,
    check="app.services.finetunes:check_submission",
)
