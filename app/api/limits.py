"""Rate limits per key, with the `limits` library (what flask-limiter wraps): Redis on services, so every API
process counts together; memory on the embedded default (one process). A key's own limit (`--rate-limit`) or
LLMOS_RATE_LIMIT; requests without a valid key are counted per client address. Every answer carries
RateLimit-Limit; a 429 also Retry-After, RateLimit-Remaining and RateLimit-Reset. A fixed window, counted in
leases (below).

The check runs in a before-request hook on the same storage, strategy and keys flask-limiter used
(`LIMITS:LIMITER/llmos-rl:<database>/key:<hash>/global/<n>/1/<unit>`), so counters carry over an upgrade.
flask-limiter's own per-request path (limit resolution through its manager, ordered sets, a per-request context
object, its after-request hook) cost more CPU than the store's round trip for a limit that is one application-wide
callable: a quarter of POST /jobs's time in the API process.

On Redis, an API process takes a key's hits from the store in small leases (`Leases`): one INCRBY of n counts n
hits in the window at once and this process serves the next n-1 requests of that key without a round trip.
Leases shrink as the window fills (an eighth of what the store has left, at most 32), down to one hit per
request near the limit, and a lease is only granted from what is left, so all processes together never serve
more than the limit in a window; unused hits of a lease end with their window (another process's request may
be refused a little early, by at most what the other processes hold). The memory store (one process) is asked
every time."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from flask import Flask, Response, g, request
from limits import RateLimitItem, parse
from limits.storage import RedisStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from app.platform import platform
from app.services import auth

log = logging.getLogger("llmos.api")

EXEMPT = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/ui")
SCOPE = "global"  # flask-limiter's scope of an application-wide limit: part of the store's key


@lru_cache(maxsize=256)
def limit_item(text: str) -> RateLimitItem:
    """`N/minute` as a limits item (parsed once per distinct text)."""
    return parse(text)


class RateLimited(TooManyRequests):
    """The rate limit's 429 (the after-request hook adds what is left and when)."""

    def __init__(self, item: RateLimitItem) -> None:
        super().__init__(description=str(item))  # "5 per 1 minute", the message flask-limiter gave


@dataclass
class _Lease:
    left: int = 0  # hits already counted in the store that this process may still serve
    until: float = 0.0  # the end of the store's window they were counted in (time.time())
    seen: int = 0  # the window's count in the store when last asked


class Leases:
    """Fixed-window hits taken from the store `most` at a time (see the module's docstring)."""

    def __init__(self, storage: Storage, most: int = 32) -> None:
        self.storage = storage
        self.most = most if isinstance(storage, RedisStorage) else 1
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        key = item.key_for(*identifiers)
        now = time.time()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.left > 0 and now < lease.until:
                lease.left -= 1
                return True
            seen = lease.seen if lease is not None else 0
        n = max(1, min(self.most, (item.amount - seen) // 8))
        count = self.storage.incr(key, item.get_expiry(), amount=n)
        granted = min(n, item.amount - (count - n))  # only what the window had left
        until = self.storage.get_expiry(key) if granted > 1 else 0.0  # whole seconds, never past the window
        with self._lock:
            if len(self._leases) > 10_000:
                self._leases = {k: v for k, v in self._leases.items() if v.until > now}
            self._leases[key] = _Lease(left=max(0, granted - 1), until=until, seen=count)
        return granted > 0


def _who(digest: str | None) -> str:
    return f"key:{digest[:32]}" if digest else f"ip:{request.remote_addr or '127.0.0.1'}"


def init_limits(app: Flask) -> FixedWindowRateLimiter:
    s = app.extensions["llmos"].settings
    redis = s.broker_url.startswith(("redis://", "rediss://"))
    database = s.database_url.rsplit("/", 1)[-1].split("?")[0] or "embedded"
    prefix = f"llmos-rl:{database}"
    storage = storage_from_string(s.broker_url, socket_timeout=2, socket_connect_timeout=2) if redis \
        else storage_from_string("memory://")
    assert isinstance(storage, Storage)  # a synchronous store
    limiter = FixedWindowRateLimiter(storage)  # the window's stats for a 429
    leases = Leases(storage)

    @app.before_request
    def _check() -> None:
        rule = request.url_rule
        # no route (404, 405) or a static file: not counted, as flask-limiter did
        if rule is None or rule.endpoint == "static" or request.path.startswith(EXEMPT):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        digest = auth.key_hash(token) if token and scheme.lower() == "bearer" else None
        p = platform()
        info = p.lookups.key(p.db, digest) if digest else None
        item = limit_item((info.rate_limit if info is not None and info.rate_limit else None) or s.rate_limit)
        args = (prefix, _who(digest), SCOPE)
        g.llmos_rate = (item, args)
        try:
            allowed = leases.hit(item, *args)
        except Exception:  # noqa: BLE001 - Redis down: the API keeps serving, unlimited, rather than failing
            log.exception("rate limit store unreachable; request not counted")
            return
        if not allowed:
            log.info("rate limit %s exceeded by %s", item, args[1])
            g.llmos_rate_limited = True
            raise RateLimited(item)

    @app.after_request
    def _headers(response: Response) -> Response:
        # the limit is known without asking the store; what is left and when it resets cost one more round
        # trip, so they are sent with the rate limit's own 429 only, where a client needs them
        state = g.get("llmos_rate")
        if state is None:
            return response
        item, args = state
        response.headers["RateLimit-Limit"] = str(item.amount)
        if response.status_code == 429 and g.get("llmos_rate_limited"):  # not a quota's 429: its own Retry-After
            try:
                reset_at, remaining = limiter.get_window_stats(item, *args)
            except Exception:  # noqa: BLE001
                log.exception("rate limit store unreachable; 429 without its window")
                return response
            left = max(1, int(reset_at - time.time()))
            response.headers["RateLimit-Remaining"] = str(remaining)
            response.headers["RateLimit-Reset"] = str(left)
            response.headers["Retry-After"] = str(left)
        return response

    return limiter
