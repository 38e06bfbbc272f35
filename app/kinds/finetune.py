"""finetune: a LoRA adapter trained on a causal LM (method "lora"), or an encoder (an embedding model such as
all-minilm-l6-v2) fine-tuned to classify texts ("classification") or tag tokens ("token_classification"), fully or
with LoRA; from JSONL files. The new model is registered for its owner in the transaction that marks the job
succeeded. Checkpoints let a new attempt resume where the last stopped."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


ENCODER_METHODS = {"classification": "classifier", "token_classification": "token-classifier"}  # -> new model kind


class FinetuneParams(_Strict):
    method: Literal["lora", "classification", "token_classification"] = Field(
        "lora", description="lora: a causal LM learns completions; classification (text -> label) and "
                            "token_classification (tokens -> BIO tags): an encoder (embedding model) learns a head")
    tuning: Literal["full", "lora"] | None = Field(
        None, description="encoder methods: train every weight (full, the default) or LoRA adapters (merged into "
                          "the saved model); method lora is always lora")
    lora: LoraParams = Field(default_factory=LoraParams)
    n_epochs: int = Field(3, ge=1, le=1000)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=1024)
    max_seq_len: int = Field(1024, ge=8, le=131_072)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    log_every_steps: int = Field(10, ge=1, description="a progress event with losses every this many steps")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="checkpoints besides one per epoch")

    @model_validator(mode="after")
    def _tuning(self) -> FinetuneParams:
        if self.method == "lora" and self.tuning == "full":
            raise ValueError("tuning 'full' is for the encoder methods (classification, token_classification)")
        return self


class FinetuneOutput(_Strict):
    model: str
    base_model: str
    checkpoints: list[str]
    steps: int
    epochs: int
    train_loss: float | None
    valid_loss: float | None
    method: str = "lora"
    labels: list[str] | None = Field(None, description="encoder methods: the classes, or the entity types")
    metrics: dict[str, Any] | None = Field(None, description="encoder methods: the last validation metrics "
                                           "(accuracy, macro_f1; or precision, recall, f1 over entities)")


KIND = JobKind(
    name="finetune",
    description="Fine-tuning on JSONL training data: LoRA on a causal LM, or an encoder for classification or "
                "token classification (NER); output.model is the new model.",
    input=FinetuneInput,
    params=FinetuneParams,
    output=FinetuneOutput,
    model_kind="causal-lm",
    other_model_kinds=("embedding",),  # the encoder methods
    handler="workers.kinds.finetune:run",
    default_timeout_s=24 * 3600,
    resumable=True,
    check="app.services.finetunes:check_submission",
)
