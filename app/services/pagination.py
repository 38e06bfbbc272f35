"""Cursor pagination, newest first, over (created_at, id)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import InvalidInput

MAX_LIMIT = 100


def parse_limit(raw: str | None, default: int = 20) -> int:
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidInput("limit must be an integer", field="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


def encode_cursor(created_at: datetime, key: Any) -> str:
    raw = json.dumps([created_at.isoformat(), key]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, key = json.loads(raw)
        return datetime.fromisoformat(ts), key
    except (ValueError, TypeError):
        raise InvalidInput("invalid cursor", field="cursor") from None


def paginate(
    stmt: Select, *, created: InstrumentedAttribute, key: InstrumentedAttribute,
    cursor: str | None, limit: int,
) -> Select:
    if cursor:
        ts, k = decode_cursor(cursor)
        if type(k) is not key.type.python_type:  # a forged cursor must not reach the database as a 500
            raise InvalidInput("invalid cursor", field="cursor")
        stmt = stmt.where(or_(created < ts, and_(created == ts, key < k)))
    return stmt.order_by(created.desc(), key.desc()).limit(limit + 1)


def page(rows: list[Any], limit: int, created_attr: str, key_attr: str) -> tuple[list[Any], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, created_attr), getattr(last, key_attr))
