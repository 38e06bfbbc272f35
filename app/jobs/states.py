"""Job statuses and the one table of legal transitions. lifecycle.py compare-and-sets along these edges only."""

from __future__ import annotations

from typing import NamedTuple

from app.models import JobStatus

__all__ = ["ACTIVE", "EDGES", "TERMINAL", "TRANSITIONS", "JobStatus", "Transition", "legal", "sources"]

TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
ACTIVE = frozenset({JobStatus.running, JobStatus.cancelling})  # a worker holds the job


class Transition(NamedTuple):
    sources: frozenset[JobStatus]
    target: JobStatus
    event: str  # the job event it writes (the state entered, or the happening)


def _t(sources: set[JobStatus], target: JobStatus, event: str | None = None) -> Transition:
    return Transition(frozenset(sources), target, event or target.value)


Q, R, C = JobStatus.queued, JobStatus.running, JobStatus.cancelling
TRANSITIONS: dict[str, Transition] = {
    "claim": _t({Q}, R),                          # a worker takes it (attempt + 1)
    "progress": _t({R}, R, "progress"),           # numbers while it runs; status unchanged
    "succeed": _t({R, C}, JobStatus.succeeded),   # a cancel that arrives after the last step loses
    "fail": _t({R, C}, JobStatus.failed),
    "stop_cancelled": _t({R, C}, JobStatus.cancelled),  # the worker stopped on a cancel
    "cancel_queued": _t({Q}, JobStatus.cancelled),      # never runs
    "request_cancel": _t({R}, C),                       # the worker stops between steps
    "hand_back": _t({R}, Q, "retry"),                   # a stopping worker returns it
    "requeue_lost": _t({R}, Q, "retry"),                # its worker stopped heart-beating
    "fail_lost": _t({R}, JobStatus.failed),             # ... with no attempts left
    "cancel_lost": _t({C}, JobStatus.cancelled),        # ... while it was being cancelled
    "expire": _t({R, C}, JobStatus.failed),             # ran past its time limit and the worker did not stop it
}

EDGES: frozenset[tuple[JobStatus, JobStatus]] = frozenset(
    (s, t.target) for t in TRANSITIONS.values() for s in t.sources
)


def sources(name: str) -> tuple[JobStatus, ...]:
    """The statuses a transition may start from (for the compare-and-set)."""
    return tuple(sorted(TRANSITIONS[name].sources))


def legal(before: JobStatus, after: JobStatus) -> bool:
    return before == after or (before, after) in EDGES
