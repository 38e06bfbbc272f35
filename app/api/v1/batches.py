"""/v1/batches: create from an uploaded Batch JSONL file, retrieve, cancel, list."""

from __future__ import annotations

from app.api.v1.base import V1Resource
from app.platform import platform
from app.services import batches as native
from app.services.openai import batches


class BatchList(V1Resource):
    def post(self) -> tuple[dict, int]:
        p = platform()
        batch, rows = batches.create(db=p.db, lookups=p.lookups, settings=p.settings, owner_id=self.owner_id,
                                     body=self.json_body())
        p.dispatcher.publish(rows)
        if not rows:  # every line failed its checks: nothing to run, the files are written now
            native.finalize(db=p.db, settings=p.settings, batch_id=batch.id)
        with p.db.session() as session:
            return batches.batch_object(batches.get(session=session, owner_id=self.owner_id,
                                                    batch_id=batch.id)), 200

    def get(self) -> dict:
        after, limit, _order = self.list_args()
        with platform().db.session() as session:
            return batches.list_batches(session=session, owner_id=self.owner_id, after=after, limit=limit)


class BatchItem(V1Resource):
    def get(self, batch_id: str) -> dict:
        with platform().db.session() as session:
            return batches.batch_object(batches.get(session=session, owner_id=self.owner_id, batch_id=batch_id))


class BatchCancel(V1Resource):
    def post(self, batch_id: str) -> dict:
        p = platform()
        with p.db.session() as session:
            batches.get(session=session, owner_id=self.owner_id, batch_id=batch_id)
            native.cancel_batch(session=session, owner_id=self.owner_id, batch_id=batch_id)
        native.finalize(db=p.db, settings=p.settings, batch_id=batch_id)  # nothing running: cancelled now
        with p.db.session() as session:
            return batches.batch_object(batches.get(session=session, owner_id=self.owner_id, batch_id=batch_id))


ROUTES = [(BatchList, "/batches"), (BatchItem, "/batches/<string:batch_id>"),
          (BatchCancel, "/batches/<string:batch_id>/cancel")]
