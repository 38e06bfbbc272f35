"""The base /v1 resource: the same bearer keys, OpenAI's list arguments (`after`, `limit`, `order`)."""

from __future__ import annotations

from flask import request

from app.api.base import AuthResource
from app.services.openai.common import parse_order
from app.services.pagination import parse_limit


class V1Resource(AuthResource):
    @staticmethod
    def list_args(*, default_limit: int = 20, high: int = 100,
                  default_order: str = "desc") -> tuple[str | None, int, str]:
        return (request.args.get("after") or None,
                parse_limit(request.args.get("limit"), default=default_limit, high=high),
                parse_order(request.args.get("order"), default_order))
