"""/v1/models: the registry as OpenAI's model objects; `owned_by` is the owner's name or `system`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.models import ModelEntry, Owner
from app.services import registry
from app.services.openai.common import olist, ts


def model_object(session: Session, m: ModelEntry) -> dict[str, Any]:
    owner = session.get(Owner, m.owner_id) if m.owner_id is not None else None
    return {"id": m.name, "object": "model", "created": ts(m.created_at),
            "owned_by": owner.name if owner is not None else "system"}


def list_models(*, session: Session, owner_id: int) -> dict[str, Any]:
    return olist([model_object(session, m) for m in registry.list_models(session=session, owner_id=owner_id)])


def get_model(*, session: Session, owner_id: int, name: str) -> dict[str, Any]:
    return model_object(session, registry.get_visible(session=session, name=name, owner_id=owner_id))
