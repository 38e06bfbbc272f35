"""Owners and API keys. Keys are random, shown once, stored as SHA-256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from app.models import ApiKey, Owner

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


def authenticate(*, session: Session, authorization: str | None) -> Owner:
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    row = session.execute(
        select(Owner).join(ApiKey, ApiKey.owner_id == Owner.id)
        .where(ApiKey.key_hash == _hash(key.strip()), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    return row
