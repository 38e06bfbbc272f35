"""The result cache: a deterministic request asked again is answered without touching a model.

- What is cached: `generate` jobs at temperature 0 or with a fixed seed (not streamed), and `embed` jobs; a job
  opts out with `"cache": false`. The key is a hash of the owner, the model's fingerprint (name, version,
  source, adapter, registration time: a model deleted or replaced gets new keys, and its old entries are never
  read again), the kind, the input and the params. Private to the owner: the owner is part of the key.
- Where: Redis on services (the broker's server; one key per entry with its TTL, and a sorted set that bounds
  their number), the database on the embedded default (the `result_cache` table, bounded the same way).
- When: a worker stores the result as the job succeeds (the key travels on the job: `jobs.cache_key`); the API
  looks it up at submit and, on a hit, writes the job already succeeded (`usage.cached: true`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select

from app.db import Database
from app.models import ResultCacheEntry, utcnow
from app.settings import Settings

log = logging.getLogger(__name__)

KINDS = ("generate", "embed")


def cacheable(kind: str, params: dict[str, Any]) -> bool:
    if kind == "embed":
        return True
    if kind != "generate" or params.get("stream"):
        return False
    return float(params.get("temperature", 1.0)) == 0.0 or params.get("seed") is not None


def cache_key(*, owner_id: int, model_fingerprint: str, kind: str, input: dict[str, Any],
              params: dict[str, Any]) -> str:
    raw = json.dumps([owner_id, model_fingerprint, kind, input, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


class ResultCache:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.ttl_s = settings.result_cache_ttl_s
        self.max_entries = settings.result_cache_max_entries
        url = settings.broker_url
        self._redis: Any = None
        if url.startswith(("redis://", "rediss://")):
            import redis

            self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            database = settings.database_url.rsplit("/", 1)[-1].split("?")[0]
            self.prefix = f"llmos-rc:{database}:"

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_entries > 0

    def get(self, key: str) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        if not self.enabled:
            return None
        try:
            if self._redis is not None:
                raw = self._redis.get(self.prefix + key)
                if raw is None:
                    return None
                value = json.loads(raw)
                return value["output"], value.get("usage")
            with self.db.session() as session:
                row = session.get(ResultCacheEntry, key)
                if row is None or row.expires_at <= utcnow():
                    return None
                return dict(row.output), dict(row.usage) if row.usage is not None else None
        except Exception as exc:  # noqa: BLE001 - a cache that cannot answer is a miss, never an error
            log.warning("result cache unavailable (%s): a miss", exc.__class__.__name__)
            return None

    def put(self, key: str, *, owner_id: int, output: dict[str, Any], usage: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        value = json.dumps({"output": output, "usage": usage}, separators=(",", ":"))
        if len(value) > self.settings.result_cache_max_entry_bytes:
            return
        try:
            if self._redis is not None:
                index = self.prefix + "index"
                stamp = utcnow().timestamp()
                pipe = self._redis.pipeline(transaction=False)
                pipe.set(self.prefix + key, value, ex=max(1, int(self.ttl_s)))
                pipe.zadd(index, {key: stamp})
                pipe.zremrangebyscore(index, 0, stamp - self.ttl_s)  # entries Redis has expired already
                pipe.zcard(index)
                *_, count = pipe.execute()
                if count > self.max_entries:  # the oldest go first
                    old = [k.decode() for k, _ in self._redis.zpopmin(index, count - self.max_entries)]
                    self._redis.delete(*(self.prefix + k for k in old))
                return
            now = utcnow()
            with self.db.session() as session:
                session.merge(ResultCacheEntry(key=key, owner_id=owner_id, output=output, usage=usage,
                                               created_at=now, expires_at=now + timedelta(seconds=self.ttl_s)))
                session.execute(delete(ResultCacheEntry).where(ResultCacheEntry.expires_at <= now))
                count = session.scalar(select(func.count()).select_from(ResultCacheEntry)) or 0
                if count > self.max_entries:
                    oldest = select(ResultCacheEntry.key).order_by(ResultCacheEntry.created_at) \
                        .limit(count - self.max_entries).scalar_subquery()
                    session.execute(delete(ResultCacheEntry).where(ResultCacheEntry.key.in_(oldest)))
        except Exception as exc:  # noqa: BLE001 - not caching costs only time
            log.warning("result not cached (%s)", exc.__class__.__name__)
