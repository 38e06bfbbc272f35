"""flask-restful resources, one module per resource, and the JSON error handling they share."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from flask import Flask, jsonify, request
from flask_restful import Api
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from app.errors import ApiError
from app.schemas import check_json

log = logging.getLogger("llmos.api")

HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    422: "invalid_input", 429: "rate_limited", 431: "headers_too_large",
}
# a JSON body that may carry a NUL or a lone surrogate (escaped, or as CESU-8 bytes): parsed and checked up front
RAW_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})|\xed[\xa0-\xbf]")
# header values and query strings: no control characters but tab; URL path and query: no NUL or lone surrogate
HEADER_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
URL_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def error_response(exc: BaseException) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Every error becomes {"error": {"code", "message", "field"?}} with its status; never a traceback."""
    if isinstance(exc, ApiError):
        return exc.body(), exc.status, exc.headers
    if isinstance(exc, RequestRedirect):  # a path werkzeug would redirect: say where, in JSON
        return ({"error": {"code": "moved", "message": f"this resource is at {exc.new_url}"}}, exc.code,
                {"Location": exc.new_url})
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "the request body is larger than the limit (LLMOS_MAX_REQUEST_BYTES)"
        headers = {k: v for k, v in exc.get_headers() if k in ("Allow", "Retry-After")}
        return {"error": {"code": HTTP_CODES.get(status, "http_error"), "message": message}}, status, headers
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

    def error_router(self, original_handler, e):  # noqa: ANN001, ANN201
        # every answer of this app is JSON: flask-restful's own router matches the URL again to decide, and a
        # path werkzeug redirects (/jobs//cancel) escaped it as an HTML 500
        return self.handle_error(e)


_HEADER_KEYS = ("CONTENT_TYPE", "CONTENT_LENGTH")  # the two headers WSGI keeps without the HTTP_ prefix


def _header_values(environ: dict[str, Any]) -> list[str]:
    """The request headers' values, as werkzeug's EnvironHeaders yields them, without making their names."""
    return [v for k, v in environ.items()
            if (k.startswith("HTTP_") and k not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"))
            or (k in _HEADER_KEYS and v)]


def check_request() -> None:
    """What no resource should have to look at: NUL or lone surrogates in the URL, control characters in a header
    or the query, NUL or lone surrogates anywhere in a JSON body (400/422 naming the field)."""
    if URL_UNSTORABLE.search(request.path):
        raise ApiError("the URL path contains a NUL character or a lone surrogate", code="bad_request", status=400)
    environ = request.environ
    if environ.get("QUERY_STRING"):
        for name, value in request.args.items(multi=True):
            if HEADER_CONTROL.search(name) or HEADER_CONTROL.search(value) or URL_UNSTORABLE.search(name + value):
                raise ApiError(f"query parameter {name!r} contains a control character", code="bad_request",
                               status=400)
    # every header value at once (tab, the one control character allowed, joins them); by name only on a hit
    if HEADER_CONTROL.search("\t".join(_header_values(environ))):
        for name, value in request.headers.items():
            if HEADER_CONTROL.search(value):
                raise ApiError(f"header {name} contains a control character", code="bad_request", status=400,
                               field=name)
    mimetype = request.mimetype or ""
    length = request.content_length
    if (mimetype == "application/json" or mimetype.endswith("+json")) and length \
            and length <= (request.max_content_length or 0):
        raw = request.get_data(cache=True)
        if RAW_SUSPECT.search(raw):
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                return  # not JSON: the resource answers 400 invalid_json
            check_json(body)


def init_api(app: Flask) -> None:
    from app.api import batches, files, health, jobs, keys, kinds, models, openapi, queues, ui, v1, webhooks, workers

    app.url_map.merge_slashes = False  # /jobs//cancel is no job's path: a 404, not a redirect to /jobs/cancel
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
    api.add_resource(queues.QueueList, "/queues")
    api.add_resource(kinds.KindList, "/kinds")
    api.add_resource(keys.KeyList, "/keys")
    api.add_resource(keys.KeyRevoke, "/keys/<int:key_id>/revoke")
    v1.register(api)
    openapi.register(app)
    ui.register(app)  # the dashboard at /ui: static files, no key

    app.before_request(check_request)
    if "gunicorn" in sys.modules:  # served by gunicorn: its own 400/414/431 answers in JSON too
        from app import gunicorn_json

        gunicorn_json.install()

    @app.errorhandler(Exception)
    def _any(e: Exception):  # noqa: ANN202
        body, status, headers = any_error(e)
        resp = jsonify(body)
        resp.status_code = status
        resp.headers.update(headers)
        return resp
