from __future__ import annotations

import logging
import shutil

from app.api.base import AuthResource
from app.platform import platform
from app.schemas import model_public
from app.services import registry


class ModelList(AuthResource):
    def get(self) -> dict:
        with platform().db.session() as session:
            return {"data": [model_public(m) for m in registry.list_models(session=session, owner_id=self.owner_id)],
                    "next_cursor": None}


class ModelItem(AuthResource):
    write_scope = "finetune"  # deleting a model: the fine-tuned ones are what a key may delete

    def get(self, name: str) -> dict:
        with platform().db.session() as session:
            return model_public(registry.get_visible(session=session, name=name, owner_id=self.owner_id))

    def delete(self, name: str) -> dict:
        with platform().db.session() as session:
            adapter = registry.delete_model(session=session, name=name, owner_id=self.owner_id)
        if adapter:  # after commit: the row is gone, so nothing can load it any more
            shutil.rmtree(adapter, ignore_errors=True)
            logging.getLogger("llmos.api").info("model=%s deleted with its adapter", name)
        return {"id": name, "object": "model", "deleted": True}
