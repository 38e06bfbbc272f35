"""Queues as the database sees them: per queue, jobs waiting (depth), the age of the oldest, jobs running and the
live workers that consume it. The same figures /metrics exports (app.metrics), as JSON for the dashboard and for
scripts. Queue names (`<kind>.<gpu type>`) and counts say nothing about any owner's jobs, so any key with jobs:read
may read them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from sqlalchemy import func, select

from app.api.base import AuthResource
from app.models import Job, JobStatus, utcnow
from app.platform import platform
from app.schemas import Out, iso
from app.services import workers

OPEN = (JobStatus.queued, JobStatus.running, JobStatus.cancelling)


class QueuePublic(Out):
    """One queue as GET /queues answers it: every queue with jobs waiting or running, or a live worker."""

    object: Literal["queue"]
    name: str = Field(description="<kind>.<gpu type>, as jobs are routed: generate.h100, finetune.any, ...")
    depth: int = Field(description="jobs waiting (status queued)")
    oldest_queued_at: str | None = Field(description="when the oldest waiting job was submitted")
    oldest_age_s: float | None = Field(description="its age in seconds (null when none waits)")
    running: int = Field(description="jobs running or being cancelled")
    workers: int = Field(description="live (heart-beating) workers that consume this queue")


class QueueList(AuthResource):
    def get(self) -> dict[str, Any]:
        p = platform()
        stale = p.settings.heartbeat_interval_s * 3
        now = utcnow()
        with p.db.session() as session:
            rows = session.execute(select(Job.queue, Job.status, func.count(), func.min(Job.created_at))
                                   .where(Job.status.in_(OPEN)).group_by(Job.queue, Job.status)).all()
            live = [w for w in workers.list_workers(session=session) if workers.is_alive(w, stale_after_s=stale)]
        queues: dict[str, dict[str, Any]] = {}

        def entry(name: str) -> dict[str, Any]:
            return queues.setdefault(name, {"object": "queue", "name": name, "depth": 0, "oldest_queued_at": None,
                                            "oldest_age_s": None, "running": 0, "workers": 0})

        for name, status, n, first in rows:
            q = entry(name)
            if getattr(status, "value", status) == JobStatus.queued.value:
                q["depth"] = n
                q["oldest_queued_at"] = iso(first)
                q["oldest_age_s"] = round(max(0.0, (now - first).total_seconds()), 3) if first is not None else None
            else:
                q["running"] += n
        for w in live:
            for name in w.queues or []:
                entry(name)["workers"] += 1
        ordered = sorted(queues.values(), key=lambda q: (-q["depth"], -q["running"], q["name"]))
        return {"data": ordered, "next_cursor": None}
