"""OpenAI's conventions shared by every /v1 object: integer Unix-second timestamps, id prefixes, lists as
`{object: "list", data, first_id, last_id, has_more}` paged with `after` (an id) and `limit`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import InvalidInput


def ts(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp())


# a native id's prefix -> the prefix OpenAI's clients know it by on /v1 (the random part is the same)
def to_v1(native_id: str, v1_prefix: str) -> str:
    """`job_0a1b…` -> `ftjob-0a1b…` (or `chatcmpl-…`); `file_0a1b…` -> `file-0a1b…`."""
    _, _, rand = native_id.partition("_")
    return f"{v1_prefix}{rand}"


def to_native(v1_id: str, v1_prefix: str, native_prefix: str) -> str:
    """The native id behind a /v1 id; a native id is accepted as is."""
    if v1_id.startswith(v1_prefix):
        return f"{native_prefix}_{v1_id[len(v1_prefix):]}"
    return v1_id


def olist(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def parse_order(raw: str | None, default: str = "desc") -> str:
    order = raw or default
    if order not in ("asc", "desc"):
        raise InvalidInput("order must be 'asc' or 'desc'", field="order")
    return order


def after_page(session: Session, stmt: Select[Any], *, created: InstrumentedAttribute[Any],
               key: InstrumentedAttribute[Any], after: str | None, limit: int,
               order: str = "desc") -> tuple[list[Any], bool]:
    """One page of `stmt` ordered by (created, key), starting after the row whose key is `after` (looked up
    within the same filtered statement, so an id of someone else's is unknown here). Ties on `created` are
    broken by the key, so a cursor always advances and no item is seen twice."""
    if after:
        row = session.execute(stmt.with_only_columns(created).where(key == after)).first()
        if row is None:
            raise InvalidInput(f"after: no item {after!r} in this list", field="after")
        at = row[0]
        if order == "desc":
            stmt = stmt.where(or_(created < at, and_(created == at, key < after)))
        else:
            stmt = stmt.where(or_(created > at, and_(created == at, key > after)))
    ordering = (created.desc(), key.desc()) if order == "desc" else (created.asc(), key.asc())
    rows = list(session.scalars(stmt.order_by(*ordering).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
