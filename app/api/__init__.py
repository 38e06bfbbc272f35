"""flask-restful resources, one module per resource, and the JSON error handling they share."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from flask_restful import Api
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from app.errors import ApiError

log = logging.getLogger("llmos.api")

HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input",
    429: "rate_limited",
}


def error_response(exc: BaseException) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Every error becomes {"error": {"code", "message", "field"?}} with its status; never a traceback."""
    if isinstance(exc, ApiError):
        return exc.body(), exc.status, exc.headers
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "the request body is larger than the limit (LLMOS_MAX_REQUEST_BYTES)"
        return {"error": {"code": HTTP_CODES.get(status, "http_error"), "message": message}}, status, {}
    if isinstance(exc, DBAPIError) and (exc.connection_invalidated or _is_connection_error(exc)):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return ({"error": {"code": "unavailable", "message": "the database is unavailable; try again"}},
                503, {"Retry-After": "5"})
    log.exception("unhandled error")
    return {"error": {"code": "internal", "message": "internal error"}}, 500, {}


def _is_connection_error(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def any_error(exc: BaseException) -> tuple[dict[str, Any], int, dict[str, str]]:
    """error_response in the dialect of the surface asked: OpenAI's under /v1, the native one elsewhere."""
    from app.api.v1 import is_v1, openai_error

    body, status, headers = error_response(exc)
    if is_v1(request.path):
        body, status = openai_error(body, status)
    return body, status, headers


class JsonApi(Api):
    def handle_error(self, e: Exception):  # noqa: ANN201
        body, status, headers = any_error(e)
        return self.make_response(body, status, headers=headers)


def init_api(app: Flask) -> None:
    from app.api import batches, files, health, jobs, kinds, models, v1, webhooks, workers

    api = JsonApi(app, catch_all_404s=True)
    api.add_resource(health.Health, "/healthz")
    api.add_resource(jobs.JobList, "/jobs")
    api.add_resource(jobs.JobItem, "/jobs/<string:job_id>")
    api.add_resource(jobs.JobCancel, "/jobs/<string:job_id>/cancel")
    api.add_resource(jobs.JobEvents, "/jobs/<string:job_id>/events")
    api.add_resource(jobs.JobCheckpoints, "/jobs/<string:job_id>/checkpoints")
    api.add_resource(webhooks.JobWebhookDeliveries, "/jobs/<string:job_id>/webhook-deliveries")
    api.add_resource(webhooks.WebhookRedeliver, "/webhook-deliveries/<string:delivery_id>/redeliver")
    api.add_resource(webhooks.WebhookDefaultItem, "/webhooks/default")
    api.add_resource(webhooks.WebhookSecret, "/webhooks/secret")
    api.add_resource(webhooks.WebhookSecretRotate, "/webhooks/secret/rotate")
    api.add_resource(files.FileList, "/files")
    api.add_resource(files.FileItem, "/files/<string:file_id>")
    api.add_resource(files.FileContent, "/files/<string:file_id>/content")
    api.add_resource(batches.BatchList, "/batches")
    api.add_resource(batches.BatchItem, "/batches/<string:batch_id>")
    api.add_resource(batches.BatchCancel, "/batches/<string:batch_id>/cancel")
    api.add_resource(models.ModelList, "/models")
    api.add_resource(models.ModelItem, "/models/<path:name>")
    api.add_resource(workers.WorkerList, "/workers")
    api.add_resource(kinds.KindList, "/kinds")
    v1.register(api)

    @app.before_request
    def _no_nul() -> None:
        # PostgreSQL text cannot hold NUL; an id, filter or header carrying one is bad input, not a 500
        parts = [request.path, *(x for kv in request.args.items(multi=True) for x in kv), *request.headers.values()]
        if any("\x00" in p for p in parts):
            raise ApiError("the URL or a header contains a NUL character", code="bad_request", status=400)

    @app.errorhandler(Exception)
    def _any(e: Exception):  # noqa: ANN202
        body, status, headers = any_error(e)
        resp = jsonify(body)
        resp.status_code = status
        resp.headers.update(headers)
        return resp
