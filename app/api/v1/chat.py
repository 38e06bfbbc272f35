"""/v1/chat/completions, /v1/completions, /v1/embeddings: synchronous, through the queue as high-priority jobs
(visible in GET /jobs); `stream: true` answers server-sent events as the text is generated."""

from __future__ import annotations

from flask import Response

from app.api.v1.base import V1Resource
from app.platform import platform
from app.services import jobs
from app.services.openai import completions


class _Endpoint(V1Resource):
    url = ""  # the OpenAI endpoint it answers (flask-restful owns `endpoint`)

    def post(self):  # noqa: ANN201 - a JSON object, or a stream of server-sent events
        p = platform()
        call = completions.parse_call(self.url, self.json_body(), p.settings)
        job, row = jobs.create_job(db=p.db, lookups=p.lookups, settings=p.settings, owner_id=self.owner_id,
                                   spec=call.spec, body=call.body, idempotency_key=None, cache=p.result_cache,
                                   intake=p.intake)
        if row is None:  # answered from the result cache (streams are never cached)
            return completions.answer(call, job), 200, {"X-Request-Job": job.id}
        if call.stream:
            events = completions.stream(call=call, job=job, db=p.db, streams=p.streams, live=p.bus.live,
                                        owner_id=self.owner_id, publish=lambda: p.dispatcher.publish([row]))
            return Response(events, mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                     "X-Request-Job": job.id})
        p.dispatcher.publish([row])
        job = completions.wait(db=p.db, waiters=p.waiters, owner_id=self.owner_id, job=job)
        if job.status.value != "succeeded":
            raise completions.job_error(job)
        return completions.answer(call, job), 200, {"X-Request-Job": job.id}


class ChatCompletions(_Endpoint):
    url = "/v1/chat/completions"


class Completions(_Endpoint):
    url = "/v1/completions"


class Embeddings(_Endpoint):
    url = "/v1/embeddings"


ROUTES = [(ChatCompletions, "/chat/completions"), (Completions, "/completions"), (Embeddings, "/embeddings")]
