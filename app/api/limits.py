"""Rate limits per key (flask-limiter): Redis on services, so every API process counts together; memory on the
embedded default (one process). A key's own limit (`--rate-limit`) or LLMOS_RATE_LIMIT; requests without a
valid key are counted per client address. 429 with Retry-After and the RateLimit-* headers."""

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
        current = limiter.current_limit
        if current is not None:
            left = max(0, int(current.reset_at - time.time()))
            response.headers["RateLimit-Limit"] = str(current.limit.amount)
            response.headers["RateLimit-Remaining"] = str(current.remaining)
            response.headers["RateLimit-Reset"] = str(left)
            if response.status_code == 429:
                response.headers["Retry-After"] = str(max(1, left))
        return response

    return limiter


def platform_settings(app: Flask):  # noqa: ANN201 - app.settings.Settings
    return app.extensions["llmos"].settings
