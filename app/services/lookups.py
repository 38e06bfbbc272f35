"""Brief caches for the hot paths (every request authenticates; every submit looks up its model, the owner's
default webhook and the live GPU types): a hit costs no database round trip.

Each entry lives `ttl_s` at most, and is dropped at once, in every process, when what it copies changes: the
change notes an `invalidate` signal (app.jobs.signals) that its commit sends to every process, this one
included (synchronously, before the request that made the change returns).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Database
from app.jobs.lifecycle import INVALIDATE, note
from app.jobs.signals import Bus
from app.models import ApiKey, ModelEntry, WebhookSettings, Worker, utcnow

V = TypeVar("V")
MISSING = object()


class TTLCache(Generic[V]):
    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._data: dict[str, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], V]) -> V:
        now = time.monotonic()
        hit = self._data.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (now + self.ttl_s, value)
        return value

    def drop(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._data.clear()
            else:
                self._data.pop(key, None)


@dataclass(frozen=True)
class KeyInfo:
    """What authentication needs of a key row (a detached copy)."""

    id: int
    owner_id: int
    scopes: frozenset[str]
    rate_limit: str | None
    expires_at: datetime | None
    revoked: bool


@dataclass(frozen=True)
class ModelInfo:
    """What submission needs of a registry entry (a detached copy)."""

    name: str
    kind: str
    default_gpu: str | None
    owner_id: int | None
    base_model: str | None
    fingerprint: str = ""  # changes when the model is replaced, or deleted and registered again


def model_info(m: ModelEntry) -> ModelInfo:
    fingerprint = ":".join(str(x) for x in (m.name, m.version, m.source_type, m.source, m.adapter_path, m.job_id,
                                            m.created_at.isoformat() if m.created_at else ""))
    return ModelInfo(m.name, m.kind, m.default_gpu, m.owner_id, m.base_model, fingerprint)


def forget(session: Session, what: str) -> None:
    """Drop a cached copy everywhere once this transaction commits: `key:<hash>`, `model:<name>`,
    `webhook:<owner id>`."""
    note(session, INVALIDATE, what)


class Lookups:
    def __init__(self, bus: Bus, ttl_s: float = 10.0, workers_ttl_s: float = 2.0) -> None:
        self.bus = bus
        self.keys: TTLCache[KeyInfo | None] = TTLCache(ttl_s)
        self.models: TTLCache[ModelInfo | None] = TTLCache(ttl_s)
        self.webhooks: TTLCache[tuple[str, list[str]] | None] = TTLCache(ttl_s)
        self.workers: TTLCache[tuple[frozenset[str], frozenset[str]]] = TTLCache(workers_ttl_s)
        self._subscribed = False
        self._lock = threading.Lock()

    def _listen(self) -> None:
        if self._subscribed:
            return
        with self._lock:
            if not self._subscribed:
                self.bus.subscribe(INVALIDATE, self._drop)
                self._subscribed = True

    def _drop(self, what: str) -> None:
        kind, _, key = what.partition(":")
        cache: dict[str, TTLCache[Any]] = {"key": self.keys, "model": self.models, "webhook": self.webhooks}
        if kind in cache:
            cache[kind].drop(key or None)

    def key(self, db: Database, key_hash: str) -> KeyInfo | None:
        """The key with this hash (revoked or expired ones included: the caller says why it refuses), or None."""
        self._listen()

        def load() -> KeyInfo | None:
            with db.session() as session:
                row = session.execute(select(ApiKey.id, ApiKey.owner_id, ApiKey.scopes, ApiKey.rate_limit,
                                             ApiKey.expires_at, ApiKey.revoked_at)
                                      .where(ApiKey.key_hash == key_hash)).one_or_none()
            if row is None:
                return None
            return KeyInfo(int(row.id), int(row.owner_id), frozenset(row.scopes or ()), row.rate_limit,
                           row.expires_at, row.revoked_at is not None)

        return self.keys.get(key_hash, load)

    def model(self, db: Database, name: str, owner_id: int) -> ModelInfo | None:
        """The entry named `name` if `owner_id` may use it: shared models and its own fine-tuned ones."""
        self._listen()

        def load() -> ModelInfo | None:
            with db.session() as session:
                m = session.get(ModelEntry, name)
                return model_info(m) if m is not None else None

        info = self.models.get(name, load)
        if info is None or (info.owner_id is not None and info.owner_id != owner_id):
            return None
        return info

    def default_webhook(self, db: Database, owner_id: int) -> tuple[str, list[str]] | None:
        self._listen()

        def load() -> tuple[str, list[str]] | None:
            with db.session() as session:
                row = session.get(WebhookSettings, owner_id)
                return (row.url, list(row.events)) if row is not None and row.url else None

        return self.webhooks.get(str(owner_id), load)

    def gpu_types(self, db: Database, stale_after_s: float) -> tuple[frozenset[str], frozenset[str]]:
        """(GPU types of live workers, GPU types ever served), for routing."""

        def load() -> tuple[frozenset[str], frozenset[str]]:
            now = utcnow()
            with db.session() as session:
                rows = session.execute(select(Worker.gpu_type, Worker.last_heartbeat_at, Worker.stopped_at)).all()
            live = {t for t, last, stopped in rows if stopped is None and (now - last).total_seconds() < stale_after_s}
            return frozenset(live), frozenset(t for t, _, _ in rows)

        return self.workers.get("all", load)
