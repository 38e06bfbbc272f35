"""GET /kinds: every job kind POST /jobs accepts, read from the registry, with its JSON schemas."""

from __future__ import annotations

from typing import Any

from app.api.base import AuthResource
from app.jobs import kinds
from app.schemas import kind_public


class KindList(AuthResource):
    def get(self) -> dict[str, Any]:
        return {"data": [kind_public(k) for k in kinds.all_kinds() if k.public], "next_cursor": None}
