from __future__ import annotations

from flask import request

from app.api.base import AuthResource
from app.errors import InvalidInput
from app.platform import platform
from app.schemas import checkpoint_public, event_public, job_public, validate_job
from app.services import auth, finetunes, jobs


class JobList(AuthResource):
    def post(self) -> tuple[dict, int, dict]:
        p = platform()
        body = self.json_body()
        spec = validate_job(body, p.settings)
        if spec.envelope.kind == "finetune":
            auth.require(self.principal, "finetune")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise InvalidInput("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
        job, publish = jobs.create_job(db=p.db, lookups=p.lookups, settings=p.settings, owner_id=self.owner_id,
                                       spec=spec, body=body, idempotency_key=key, cache=p.result_cache,
                                       intake=p.intake)
        if publish is not None:
            p.dispatcher.publish([publish])
        public = job_public(job, self.base_url())
        headers = {"Location": public["urls"]["get"]}
        if publish is None and key is not None and not (job.usage or {}).get("cached"):
            headers["Idempotent-Replayed"] = "true"
        return public, 202, headers

    def get(self) -> dict:
        limit, cursor = self.page_args()
        with platform().db.session() as session:
            rows, next_cursor = jobs.list_jobs(
                session=session, owner_id=self.owner_id, limit=limit, cursor=cursor,
                status=request.args.get("status"), kind=request.args.get("kind"),
                model=request.args.get("model"), batch_id=request.args.get("batch_id"),
            )
            return {"data": [job_public(j, self.base_url()) for j in rows], "next_cursor": next_cursor}


class JobItem(AuthResource):
    def get(self, job_id: str) -> dict | tuple[dict, int, dict]:
        p = platform()
        wait = self.number_arg("wait", low=0, high=p.settings.max_wait_s)
        if wait:
            job, waited = jobs.wait_for_job(db=p.db, waiters=p.waiters, owner_id=self.owner_id, job_id=job_id,
                                            wait_s=wait)
            if not waited:  # this process holds as many long-polls as it may: the job as it is, poll again soon
                return job_public(job, self.base_url()), 200, {"Retry-After": "1", "X-Long-Poll": "full"}
        else:
            with p.db.session() as session:
                job = jobs.get_job(session=session, owner_id=self.owner_id, job_id=job_id)
        return job_public(job, self.base_url())


class JobCancel(AuthResource):
    def post(self, job_id: str) -> dict:
        with platform().db.session() as session:
            job = jobs.cancel_job(session=session, owner_id=self.owner_id, job_id=job_id)
            return job_public(job, self.base_url())


class JobEvents(AuthResource):
    def get(self, job_id: str) -> dict:
        limit, cursor = self.page_args()
        with platform().db.session() as session:
            order = request.args.get("order") or "asc"
            if order not in ("asc", "desc"):
                raise InvalidInput("order must be asc (oldest first) or desc (newest first)", field="order")
            rows, next_cursor = jobs.list_events(session=session, owner_id=self.owner_id, job_id=job_id,
                                                 limit=limit, cursor=cursor, order=order)
            return {"data": [event_public(e) for e in rows], "next_cursor": next_cursor}


class JobCheckpoints(AuthResource):
    def get(self, job_id: str) -> dict:
        limit, cursor = self.page_args()
        with platform().db.session() as session:
            rows, next_cursor = finetunes.list_checkpoints(session=session, owner_id=self.owner_id, job_id=job_id,
                                                           limit=limit, cursor=cursor)
            return {"data": [checkpoint_public(c) for c in rows], "next_cursor": next_cursor}
