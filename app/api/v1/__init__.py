"""OpenAI's API under /v1: thin resources over app.services.openai, so that the official `openai` client works
unmodified with base_url=http://host:8000/v1 and an LLM OS key. Errors here take OpenAI's shape and status
codes: {"error": {"message", "type", "param", "code"}}; 422 and 415 become 400 (invalid_request_error)."""

from __future__ import annotations

from typing import Any

from flask_restful import Api

PREFIX = "/v1"

# native status -> OpenAI's status and error type
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 429: "rate_limit_error"}
_STATUS = {413: 400, 415: 400, 422: 400}
_CODES = {401: "invalid_api_key", 404: "not_found"}


def is_v1(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def openai_error(body: dict[str, Any], status: int) -> tuple[dict[str, Any], int]:
    """A native error body ({"error": {"code", "message", "field"?}}) in OpenAI's shape."""
    err = body.get("error") or {}
    status = _STATUS.get(status, status)
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = err.get("code")
    if code in ("invalid_input", "bad_request", "unauthorized", "not_found", "unsupported_media_type", None):
        code = _CODES.get(status, code if code in ("not_found",) else None)
    return {"error": {"message": err.get("message", ""), "type": kind, "param": err.get("field"),
                      "code": code}}, status


def register(api: Api) -> None:
    from app.api.v1 import batches, chat, files, finetuning, models

    for module in (models, files, batches, finetuning, chat):
        for resource, *paths in module.ROUTES:
            api.add_resource(resource, *(PREFIX + p for p in paths), endpoint=f"v1_{resource.__name__}")
