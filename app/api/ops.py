"""What an operator's tools call: `GET /metrics` (Prometheus), `GET /readyz` (ready to serve), and the hooks
every request goes through: its request id (`X-Request-ID`, taken from the client or made here and always
returned), its line in the log, and its count and latency in the metrics."""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from sqlalchemy import text

from app import logging_setup, metrics
from app.platform import platform

log = logging.getLogger("llmos.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    from migrations import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


class Readiness:
    """The checks behind /readyz, each bounded in time."""

    def __init__(self) -> None:
        self._head: str | None = None
        self._lock = threading.Lock()

    def head(self) -> str | None:
        with self._lock:
            if self._head is None:
                self._head = _head_revision()
            return self._head

    def check(self) -> tuple[dict[str, Any], bool]:
        p = platform()
        checks: dict[str, Any] = {}
        try:
            with p.db.session() as s:
                s.execute(text("SELECT 1"))
                try:
                    current = s.execute(text("SELECT version_num FROM alembic_version")).scalar()
                except Exception:  # noqa: BLE001 - no alembic_version table: never migrated
                    current = None
            checks["database"] = {"ok": True}
            head = self.head()
            checks["migrations"] = {"ok": current == head, "current": current, "head": head}
        except Exception as exc:  # noqa: BLE001
            checks["database"] = {"ok": False, "error": exc.__class__.__name__}
            checks["migrations"] = {"ok": False, "error": "database unreachable"}
        checks["broker"] = _broker_check(p)
        return checks, all(c["ok"] for c in checks.values())


def _broker_check(p: Any) -> dict[str, Any]:
    url = p.settings.broker_url
    if url.startswith("filesystem"):
        folder = p.settings.broker_dir / "queue"
        ok = folder.is_dir()
        return {"ok": ok} if ok else {"ok": False, "error": f"{folder} missing"}
    celery = p.publisher.celery
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": exc.__class__.__name__}


def init_ops(app: Flask) -> None:
    p = app.extensions["llmos"]
    registry = metrics.platform_registry(p.db, p.settings)
    readiness = Readiness()

    counted: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # (route, method, status) -> the metrics' children

    def _children(rule: str, method: str, status: int) -> tuple[Any, Any]:
        key = (rule, method, status)
        found = counted.get(key)
        if found is None:  # labels() takes a lock and builds the key tuple on every call: once per key instead
            found = counted[key] = (metrics.HTTP_REQUESTS.labels(rule, method, str(status)),
                                    metrics.HTTP_LATENCY.labels(rule, method))
        return found

    @app.before_request
    def _start() -> None:
        g.llmos_t0 = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.request_id = rid
        g.llmos_rid_token = logging_setup.request_id.set(rid)

    @app.after_request
    def _finish(resp: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined] # the proxy resolved once, not per use
        ctx = g._get_current_object()
        rid = getattr(ctx, "request_id", None) or uuid.uuid4().hex
        resp.headers["X-Request-ID"] = rid
        t0 = getattr(ctx, "llmos_t0", None)
        seconds = time.perf_counter() - t0 if t0 is not None else 0.0
        rule = req.url_rule.rule if req.url_rule is not None else "unmatched"
        method, status = req.method, resp.status_code
        requests_total, latency = _children(rule, method, status)
        requests_total.inc()
        latency.observe(seconds)
        if rule not in ("/metrics", "/healthz", "/readyz") and not rule.startswith("/ui/static") \
                and log.isEnabledFor(logging.INFO):
            path, ms = req.path, seconds * 1000
            log.info("%s %s %d %.1fms", method, path, status, ms,
                     extra={"method": method, "path": path, "route": rule, "status": status,
                            "duration_ms": round(ms, 2), "request_id": rid})
        return resp

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        token = g.pop("llmos_rid_token", None)
        if token is not None:
            logging_setup.request_id.reset(token)

    def metrics_view() -> Response:
        token = p.settings.metrics_token
        if token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                resp = jsonify({"error": {"code": "unauthorized", "message": "GET /metrics needs the metrics "
                                          "token (LLMOS_METRICS_TOKEN) as a Bearer token"}})
                resp.status_code = 401
                return resp
        body, content_type = metrics.render(registry)
        return Response(body, content_type=content_type)

    def readyz_view() -> Response:
        checks, ok = readiness.check()
        resp = jsonify({"status": "ready" if ok else "not_ready", "checks": checks})
        resp.status_code = 200 if ok else 503
        if not ok:
            resp.headers["Retry-After"] = "5"
        return resp

    app.add_url_rule("/metrics", "llmos_metrics", metrics_view, methods=["GET"])
    app.add_url_rule("/readyz", "llmos_readyz", readyz_view, methods=["GET"])
