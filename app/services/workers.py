"""Worker heartbeats: who is alive, what it serves, what it has loaded."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Worker, utcnow


def heartbeat(*, session: Session, worker_id: str, **fields: Any) -> None:
    w = session.get(Worker, worker_id)
    if w is None:
        w = Worker(id=worker_id, **fields)
        session.add(w)
    else:
        for k, v in fields.items():
            setattr(w, k, v)
    w.last_heartbeat_at = utcnow()
    session.flush()


def is_alive(w: Worker, *, stale_after_s: float, now: datetime | None = None) -> bool:
    if w.stopped_at is not None:
        return False
    return (now or utcnow()) - w.last_heartbeat_at < timedelta(seconds=stale_after_s)


def list_workers(*, session: Session) -> list[Worker]:
    return list(session.scalars(select(Worker).order_by(Worker.last_heartbeat_at.desc())))


def gpu_types_served(*, session: Session) -> set[str]:
    """Every GPU type a worker has ever heart-beaten with."""
    return set(session.scalars(select(Worker.gpu_type).distinct()))


def live_gpu_types(*, session: Session, stale_after_s: float) -> set[str]:
    return {w.gpu_type for w in list_workers(session=session) if is_alive(w, stale_after_s=stale_after_s)}
