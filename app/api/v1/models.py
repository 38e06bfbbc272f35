"""/v1/models: list, retrieve, delete (an owner's fine-tuned models)."""

from __future__ import annotations

import logging
import shutil

from app.api.v1.base import V1Resource
from app.platform import platform
from app.services import registry
from app.services.openai import models


class ModelList(V1Resource):
    def get(self) -> dict:
        with platform().db.session() as session:
            return models.list_models(session=session, owner_id=self.owner_id)


class ModelItem(V1Resource):
    write_scope = "finetune"  # deleting a model: the fine-tuned ones are what a key may delete

    def get(self, name: str) -> dict:
        with platform().db.session() as session:
            return models.get_model(session=session, owner_id=self.owner_id, name=name)

    def delete(self, name: str) -> dict:
        with platform().db.session() as session:
            adapter = registry.delete_model(session=session, name=name, owner_id=self.owner_id)
        if adapter:  # after commit: the row is gone, so nothing can load it any more
            shutil.rmtree(adapter, ignore_errors=True)
            logging.getLogger("llmos.api").info("model=%s deleted with its adapter", name)
        return {"id": name, "object": "model", "deleted": True}


ROUTES = [(ModelList, "/models"), (ModelItem, "/models/<path:name>")]
