"""Owners and API keys. Keys are random, shown once, stored as SHA-256; each carries scopes, an optional rate
limit and expiry. A revoked or expired key is refused at once, in every process (the cached copies are
dropped when the revoke commits; expiry is checked on every request)."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import ApiError, InvalidInput, NotFound, Unauthorized
from app.models import DEFAULT_SCOPES, SCOPES, ApiKey, Owner, utcnow
from app.services.lookups import Lookups, forget

KEY_PREFIX = "llmos_"
TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per key and process
RATE_UNITS = ("second", "minute", "hour", "day")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request is: the owner, the key and what the key may do."""

    owner_id: int
    key_id: int
    scopes: frozenset[str]
    rate_limit: str | None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def get_or_create_owner(*, session: Session, name: str) -> Owner:
    owner = session.scalar(select(Owner).where(Owner.name == name))
    if owner is None:
        owner = Owner(name=name)
        session.add(owner)
        session.flush()
    return owner


def parse_scopes(raw: str | list[str] | None) -> list[str]:
    if raw is None:
        return list(DEFAULT_SCOPES)
    items = [s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw) if s.strip()]
    unknown = [s for s in items if s not in SCOPES]
    if unknown or not items:
        raise InvalidInput(f"scopes: unknown scope {unknown[0]!r}; use any of {', '.join(SCOPES)}" if unknown
                           else "scopes: give at least one", field="scopes")
    return list(dict.fromkeys(items))


def parse_rate_limit(raw: str | None) -> str | None:
    """`N/minute` (or second, hour, day), as the `limits` library parses it."""
    if raw is None:
        return None
    count, _, unit = raw.strip().partition("/")
    if not count.isdigit() or int(count) < 1 or unit.rstrip("s") not in RATE_UNITS:
        raise InvalidInput("rate_limit: write it as N/minute (or N/second, N/hour, N/day)", field="rate_limit")
    return f"{int(count)}/{unit.rstrip('s')}"


def create_key(*, session: Session, owner_name: str, name: str | None = None,
               scopes: str | list[str] | None = None, rate_limit: str | None = None,
               expires_in_days: float | None = None) -> str:
    """A new key for the owner (created if new); the key itself is returned once and never stored."""
    return new_key(session=session, owner_name=owner_name, name=name, scopes=scopes, rate_limit=rate_limit,
                   expires_in_days=expires_in_days)[0]


def new_key(*, session: Session, owner_name: str, name: str | None = None, scopes: str | list[str] | None = None,
            rate_limit: str | None = None, expires_in_days: float | None = None) -> tuple[str, dict[str, Any]]:
    """The key (shown once) and how it is listed."""
    owner = get_or_create_owner(session=session, name=owner_name)
    if expires_in_days is not None and expires_in_days <= 0:
        raise InvalidInput("expires_in_days must be positive", field="expires_in_days")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(owner_id=owner.id, prefix=key[: len(KEY_PREFIX) + 6], key_hash=key_hash(key), name=name,
                 scopes=parse_scopes(scopes), rate_limit=parse_rate_limit(rate_limit),
                 expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None)
    session.add(row)
    session.flush()
    return key, key_public(row, owner.name)


def key_public(k: ApiKey, owner: str) -> dict[str, Any]:
    """A key as listed: never its secret (only the prefix it starts with)."""
    from app.schemas import iso

    return {"id": k.id, "object": "api_key", "owner": owner, "prefix": k.prefix, "name": k.name,
            "scopes": list(k.scopes or ()), "rate_limit": k.rate_limit, "created_at": iso(k.created_at),
            "last_used_at": iso(k.last_used_at), "expires_at": iso(k.expires_at), "revoked_at": iso(k.revoked_at)}


def list_keys(*, session: Session, owner: str | None = None) -> list[dict[str, Any]]:
    stmt = select(ApiKey, Owner.name).join(Owner, Owner.id == ApiKey.owner_id).order_by(ApiKey.id)
    if owner is not None:
        stmt = stmt.where(Owner.name == owner)
    return [key_public(k, name) for k, name in session.execute(stmt).all()]


_touched: dict[int, float] = {}
_touch_lock = threading.Lock()


def _touch(db: Database, key_id: int) -> None:
    now = time.monotonic()
    with _touch_lock:
        if now - _touched.get(key_id, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
            return
        _touched[key_id] = now
    with db.session() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    return key.strip()


def authenticate(*, db: Database, lookups: Lookups, authorization: str | None,
                 now: datetime | None = None) -> Principal:
    """The request's principal. Looked up through a brief cache that a revoke empties everywhere."""
    info = lookups.key(db, key_hash(bearer(authorization)))
    if info is None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    if info.revoked:
        raise Unauthorized("this API key was revoked", code="invalid_api_key")
    if info.expires_at is not None and info.expires_at <= (now or utcnow()):
        raise Unauthorized("this API key has expired", code="invalid_api_key")
    _touch(db, info.id)
    return Principal(info.owner_id, info.id, info.scopes, info.rate_limit)


def require(principal: Principal, scope: str) -> None:
    if not principal.allows(scope):
        raise ApiError(f"this API key lacks the scope {scope!r}", code="insufficient_scope", status=403)


def revoke_key(*, session: Session, key_id: int) -> bool:
    """Revoke a key; refused at once in every process (the cached copies are dropped when this commits)."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    forget(session, f"key:{row.key_hash}")
    return True


def revoke_or_404(*, session: Session, key_id: int) -> dict[str, Any]:
    if not revoke_key(session=session, key_id=key_id):
        raise NotFound(f"no key {key_id}", code="key_not_found")
    row = session.get(ApiKey, key_id)
    assert row is not None
    owner = session.get(Owner, row.owner_id)
    return key_public(row, owner.name if owner else "")
