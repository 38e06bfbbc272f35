"""Batches: submit many documents with one task, read progress, list, cancel. Owner-scoped."""

from __future__ import annotations

from pathlib import Path

from flask import request

from app.api.base import AuthResource
from app.batch_schemas import (
    batch_public,
    check_documents,
    inline_documents,
    jsonl_documents,
    validate_batch,
)
from app.platform import platform
from app.services import batches


class BatchList(AuthResource):
    def post(self) -> tuple[dict, int, dict]:
        p = platform()
        request.max_content_length = p.settings.max_batch_request_bytes  # documents may be inline
        spec = validate_batch(self.json_body(), p.settings)
        env = spec.envelope
        if env.input_file_id is not None:
            with p.db.session() as session:
                f = batches.read_file_documents(session=session, owner_id=self.owner_id, file_id=env.input_file_id)
            with Path(f.path).open("rb") as fh:
                docs = check_documents(jsonl_documents(fh), spec, p.settings)
        else:
            docs = check_documents(inline_documents(env.documents or []), spec, p.settings)
        batch, rows = batches.submit_batch(db=p.db, lookups=p.lookups, settings=p.settings, owner_id=self.owner_id,
                                           spec=spec, documents=docs)
        p.dispatcher.publish(rows)
        public = batch_public(batch, self.base_url())
        return public, 202, {"Location": public["urls"]["get"]}

    def get(self) -> dict:
        limit, cursor = self.page_args()
        with platform().db.session() as session:
            rows, next_cursor = batches.list_batches(session=session, owner_id=self.owner_id, limit=limit,
                                                     cursor=cursor, status=request.args.get("status"))
            return {"data": [batch_public(b, self.base_url()) for b in rows], "next_cursor": next_cursor}


class BatchItem(AuthResource):
    def get(self, batch_id: str) -> dict:
        with platform().db.session() as session:
            return batch_public(batches.get_batch(session=session, owner_id=self.owner_id, batch_id=batch_id),
                                self.base_url())


class BatchCancel(AuthResource):
    def post(self, batch_id: str) -> dict:
        p = platform()
        with p.db.session() as session:
            batches.cancel_batch(session=session, owner_id=self.owner_id, batch_id=batch_id)
        batches.finalize(db=p.db, settings=p.settings, batch_id=batch_id)  # nothing running: cancelled now
        with p.db.session() as session:
            return batch_public(batches.get_batch(session=session, owner_id=self.owner_id, batch_id=batch_id),
                                self.base_url())
