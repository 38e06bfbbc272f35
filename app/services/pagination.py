"""Cursor pagination: newest first over (created_at, id), or in order of one unique key (`paginate_key`).

A cursor names the last item of a page; the next page holds what sorts strictly after it. The key breaks ties on
created_at, so a cursor always advances and no item is skipped or repeated. The last page has no cursor."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import InvalidInput

MAX_LIMIT = 100


def parse_limit(raw: str | None, default: int = 20, high: int = MAX_LIMIT) -> int:
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidInput("limit must be an integer", field="limit") from None
    if not 1 <= limit <= high:
        raise InvalidInput(f"limit must be between 1 and {high}", field="limit")
    return limit


def _encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode(cursor: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:  # bad base64, bad UTF-8, bad JSON
        raise InvalidInput("invalid cursor", field="cursor") from None


def encode_cursor(created_at: datetime, key: Any) -> str:
    return _encode([created_at.isoformat(), key])


def decode_cursor(cursor: str) -> tuple[datetime, Any]:
    try:
        ts, key = _decode(cursor)
        return datetime.fromisoformat(ts), key
    except (ValueError, TypeError):
        raise InvalidInput("invalid cursor", field="cursor") from None


def _checked(k: Any, key: InstrumentedAttribute) -> Any:
    if type(k) is not key.type.python_type:  # a forged cursor must not reach the database as a 500
        raise InvalidInput("invalid cursor", field="cursor")
    return k


def paginate(
    stmt: Select, *, created: InstrumentedAttribute, key: InstrumentedAttribute,
    cursor: str | None, limit: int,
) -> Select:
    if cursor:
        ts, k = decode_cursor(cursor)
        k = _checked(k, key)
        stmt = stmt.where(or_(created < ts, and_(created == ts, key < k)))
    return stmt.order_by(created.desc(), key.desc()).limit(limit + 1)


def paginate_oldest_first(
    stmt: Select, *, created: InstrumentedAttribute, key: InstrumentedAttribute,
    cursor: str | None, limit: int,
) -> Select:
    """`paginate` in ascending order (a job's events in the order they happened); the same cursors."""
    if cursor:
        ts, k = decode_cursor(cursor)
        k = _checked(k, key)
        stmt = stmt.where(or_(created > ts, and_(created == ts, key > k)))
    return stmt.order_by(created.asc(), key.asc()).limit(limit + 1)


def page(rows: list[Any], limit: int, created_attr: str, key_attr: str) -> tuple[list[Any], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, created_attr), getattr(last, key_attr))


def paginate_key(stmt: Select, *, key: InstrumentedAttribute, cursor: str | None, limit: int) -> Select:
    """In ascending order of one key unique within `stmt` (a job's webhook deliveries by seq)."""
    if cursor:
        values = _decode(cursor)
        if not isinstance(values, list) or len(values) != 1:
            raise InvalidInput("invalid cursor", field="cursor")
        stmt = stmt.where(key > _checked(values[0], key))
    return stmt.order_by(key.asc()).limit(limit + 1)


def page_key(rows: list[Any], limit: int, key_attr: str) -> tuple[list[Any], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode([getattr(rows[-1], key_attr)])
