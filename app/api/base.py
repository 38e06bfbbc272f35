"""The base resource: authentication, JSON body reading, pagination arguments."""

from __future__ import annotations

import json
from functools import wraps
from typing import Any

from flask import g, request
from flask_restful import Resource

from app.errors import ApiError, InvalidInput
from app.platform import platform
from app.services import auth
from app.services.pagination import parse_limit


def authenticated(fn):  # noqa: ANN001, ANN201
    """The key (401 without a live one), then the scope the resource asks for this method (403 without it)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        p = platform()
        g.principal = auth.authenticate(db=p.db, lookups=p.lookups,
                                        authorization=request.headers.get("Authorization"))
        resource = getattr(fn, "__self__", None)
        if isinstance(resource, AuthResource):
            auth.require(g.principal, resource.scope_for(request.method))
        return fn(*args, **kwargs)

    return wrapper


class AuthResource(Resource):
    method_decorators = [authenticated]
    read_scope = "jobs:read"  # GET and HEAD
    write_scope = "jobs:write"  # everything else

    def scope_for(self, method: str) -> str:
        return self.read_scope if method in ("GET", "HEAD", "OPTIONS") else self.write_scope

    @property
    def principal(self) -> auth.Principal:
        return g.principal

    @property
    def owner_id(self) -> int:
        return g.principal.owner_id

    @staticmethod
    def base_url() -> str:
        # scheme + Host header as sent: request.host_url would re-encode it through IRI/URI conversions each time
        return platform().settings.public_url.rstrip("/") or f"{request.scheme}://{request.host}"

    @staticmethod
    def json_body() -> Any:
        mimetype = request.mimetype or ""
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise ApiError("send the body as JSON with 'Content-Type: application/json'",
                           code="unsupported_media_type", status=415)
        raw = request.get_data(cache=True)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(f"the body is not valid JSON: {exc}", code="invalid_json", status=400) from None
        except RecursionError:
            raise ApiError("the JSON body is nested too deeply", code="invalid_json",
                           status=400) from None

    @staticmethod
    def page_args() -> tuple[int, str | None]:
        return parse_limit(request.args.get("limit")), request.args.get("cursor") or None

    @staticmethod
    def number_arg(name: str, *, low: float, high: float) -> float | None:
        raw = request.args.get(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInput(f"{name} must be a number", field=name) from None
        if not low <= value <= high:
            raise InvalidInput(f"{name} must be between {low:g} and {high:g}", field=name)
        return value
