"""Owners and API keys. Keys are random, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import Unauthorized
from app.models import ApiKey, Owner, utcnow
from app.services.lookups import Lookups, forget

KEY_PREFIX = "llmos_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_owner(*, session: Session, name: str) -> Owner:
    owner = session.scalar(select(Owner).where(Owner.name == name))
    if owner is None:
        owner = Owner(name=name)
        session.add(owner)
        session.flush()
    return owner


def create_key(*, session: Session, owner_name: str) -> str:
    owner = get_or_create_owner(session=session, name=owner_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner_id=owner.id, prefix=key[: len(KEY_PREFIX) + 6], key_hash=_hash(key)))
    session.flush()
    return key


def authenticate(*, db: Database, lookups: Lookups, authorization: str | None) -> int:
    """The owner id of the request's key. Looked up through a brief cache that a revoke empties everywhere."""
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    owner_id = lookups.owner_for_key(db, _hash(key.strip()))
    if owner_id is None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    return owner_id


def revoke_key(*, session: Session, key_id: int) -> bool:
    """Revoke a key; refused at once in every process (the cached copies are dropped when this commits)."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    forget(session, f"key:{row.key_hash}")
    return True
