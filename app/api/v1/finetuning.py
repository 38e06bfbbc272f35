"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints — native `finetune` jobs."""

from __future__ import annotations

from flask import request

from app.api.v1.base import V1Resource
from app.errors import InvalidInput
from app.platform import platform
from app.services.openai import finetuning


class FineTuningJobList(V1Resource):
    read_scope = write_scope = "finetune"

    def post(self) -> tuple[dict, int]:
        p = platform()
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise InvalidInput("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
        job, publish = finetuning.create(db=p.db, lookups=p.lookups, settings=p.settings, owner_id=self.owner_id,
                                         body=self.json_body(), idempotency_key=key)
        if publish is not None:
            p.dispatcher.publish([publish])
        with p.db.session() as session:
            return finetuning.retrieve(session=session, owner_id=self.owner_id, v1_id=job.id), 200

    def get(self) -> dict:
        after, limit, _ = self.list_args()
        with platform().db.session() as session:
            return finetuning.list_jobs(session=session, owner_id=self.owner_id, after=after, limit=limit)


class FineTuningJobItem(V1Resource):
    read_scope = write_scope = "finetune"

    def get(self, job_id: str) -> dict:
        with platform().db.session() as session:
            return finetuning.retrieve(session=session, owner_id=self.owner_id, v1_id=job_id)


class FineTuningJobCancel(V1Resource):
    read_scope = write_scope = "finetune"

    def post(self, job_id: str) -> dict:
        with platform().db.session() as session:
            return finetuning.cancel(session=session, owner_id=self.owner_id, v1_id=job_id)


class FineTuningJobEvents(V1Resource):
    read_scope = write_scope = "finetune"

    def get(self, job_id: str) -> dict:
        after, limit, _ = self.list_args()
        with platform().db.session() as session:
            return finetuning.list_events(session=session, owner_id=self.owner_id, v1_id=job_id, after=after,
                                          limit=limit)


class FineTuningJobCheckpoints(V1Resource):
    read_scope = write_scope = "finetune"

    def get(self, job_id: str) -> dict:
        after, limit, _ = self.list_args(default_limit=10)
        with platform().db.session() as session:
            return finetuning.list_checkpoints(session=session, owner_id=self.owner_id, v1_id=job_id, after=after,
                                               limit=limit)


ROUTES = [(FineTuningJobList, "/fine_tuning/jobs"), (FineTuningJobItem, "/fine_tuning/jobs/<string:job_id>"),
          (FineTuningJobCancel, "/fine_tuning/jobs/<string:job_id>/cancel"),
          (FineTuningJobEvents, "/fine_tuning/jobs/<string:job_id>/events"),
          (FineTuningJobCheckpoints, "/fine_tuning/jobs/<string:job_id>/checkpoints")]
