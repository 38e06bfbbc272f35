from __future__ import annotations

from app import platform
from app.api.base import AuthResource
from app.schemas import model_public
from app.services import registry


class ModelList(AuthResource):
    def get(self) -> dict:
        with platform().db.session() as session:
            return {"data": [model_public(m) for m in registry.list_models(session=session, owner_id=self.owner_id)],
                    "next_cursor": None}
