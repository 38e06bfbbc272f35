"""Rate limits per key (flask-limiter): Redis on services, so every API process counts together; memory on the
embedded default (one process). A key's own limit (`--rate-limit`) or LLMOS_RATE_LIMIT; requests without a
valid key are counted per client address. Every answer carries RateLimit-Limit; a 429 also Retry-After,
RateLimit-Remaining and RateLimit-Reset. One round trip to the store per request (fixed window)."""

from __future__ import annotations

import time

from flask import Flask, Response, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from app.platform import platform
from app.services import auth

EXEMPT = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/ui")


def _token_hash() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return auth.key_hash(token.strip()) if scheme.lower() == "bearer" and token.strip() else None


def _limit() -> str:
    p = platform()
    digest = _token_hash()
    info = p.lookups.key(p.db, digest) if digest else None
    return (info.rate_limit if info is not None and info.rate_limit else None) or p.settings.rate_limit


def _who() -> str:
    digest = _token_hash()
    return f"key:{digest[:32]}" if digest else f"ip:{get_remote_address()}"


def init_limits(app: Flask) -> Limiter:
    s = platform_settings(app)
    redis = s.broker_url.startswith(("redis://", "rediss://"))
    database = s.database_url.rsplit("/", 1)[-1].split("?")[0] or "embedded"
    app.config.update(
        # the headers are written below: flask-limiter's own would also raise every other Retry-After (a 503's,
        # a long-poll's) to the window's reset
        RATELIMIT_HEADERS_ENABLED=False,
        RATELIMIT_KEY_PREFIX=f"llmos-rl:{database}",
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 2, "socket_connect_timeout": 2} if redis else {},
        # Redis down: the API keeps serving, unlimited, rather than failing every request
        RATELIMIT_SWALLOW_ERRORS=True,
    )
    limiter = Limiter(_who, app=app, application_limits=[_limit], strategy="fixed-window",
                      storage_uri=s.broker_url if redis else "memory://")

    @limiter.request_filter
    def _exempt() -> bool:
        return request.path.startswith(EXEMPT)

    @app.after_request
    def _headers(response: Response) -> Response:
        # the limit is known without asking the store; what is left and when it resets cost two more round
        # trips, so they are sent with a 429 only, where a client needs them
        current = limiter.current_limit
        if current is not None:
            response.headers["RateLimit-Limit"] = str(current.limit.amount)
            if response.status_code == 429:
                left = max(1, int(current.reset_at - time.time()))
                response.headers["RateLimit-Remaining"] = str(current.remaining)
                response.headers["RateLimit-Reset"] = str(left)
                response.headers["Retry-After"] = str(left)
        return response

    return limiter


def platform_settings(app: Flask):  # noqa: ANN201 - app.settings.Settings
    return app.extensions["llmos"].settings
