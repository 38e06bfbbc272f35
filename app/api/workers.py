from __future__ import annotations

from app.api.base import AuthResource
from app.platform import platform
from app.schemas import worker_public
from app.services import workers


class WorkerList(AuthResource):
    def get(self) -> dict:
        p = platform()
        stale = p.settings.heartbeat_interval_s * 3
        with p.db.session() as session:
            rows = workers.list_workers(session=session)
            return {"data": [worker_public(w, workers.is_alive(w, stale_after_s=stale)) for w in rows],
                    "next_cursor": None}
