"""Workers: in full (hosts, pids, queues, loaded models) for admin keys; for other keys only what capacity
there is, by GPU type — another tenant's hosts and adapter names are none of theirs."""

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
            rows = [(w, workers.is_alive(w, stale_after_s=stale)) for w in workers.list_workers(session=session)]
            if self.principal.allows("admin"):
                return {"data": [worker_public(w, alive) for w, alive in rows], "next_cursor": None}
        pools: dict[str, dict] = {}
        for w, alive in rows:
            pool = pools.setdefault(w.gpu_type, {"object": "gpu_pool", "gpu_type": w.gpu_type, "alive": 0,
                                                 "total": 0, "running_jobs": 0})
            pool["total"] += 1
            if alive:
                pool["alive"] += 1
                pool["running_jobs"] += w.running_jobs
        return {"data": sorted(pools.values(), key=lambda x: x["gpu_type"]), "next_cursor": None}
