"""API keys over HTTP, for admin keys: create (the key is shown once), list (never the secret), revoke."""

from __future__ import annotations

from flask import request

from app.api.base import AuthResource
from app.errors import InvalidInput
from app.platform import platform
from app.services import auth


class KeyList(AuthResource):
    read_scope = write_scope = "admin"

    def get(self) -> dict:
        with platform().db.session() as session:
            return {"data": auth.list_keys(session=session, owner=request.args.get("owner")), "next_cursor": None}

    def post(self) -> tuple[dict, int]:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("owner"), str) or not body["owner"].strip():
            raise InvalidInput("owner: field required (the owner's name; created if new)", field="owner")
        unknown = set(body) - {"owner", "name", "scopes", "rate_limit", "expires_in_days"}
        if unknown:
            raise InvalidInput(f"{sorted(unknown)[0]}: unknown field", field=sorted(unknown)[0])
        days = body.get("expires_in_days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float))):
            raise InvalidInput("expires_in_days must be a number", field="expires_in_days")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise InvalidInput("name must be a string of at most 200 characters", field="name")
        with platform().db.session() as session:
            key, listed = auth.new_key(session=session, owner_name=body["owner"].strip()[:200], name=name,
                                       scopes=body.get("scopes"), rate_limit=body.get("rate_limit"),
                                       expires_in_days=days)
        return {**listed, "key": key}, 201


class KeyRevoke(AuthResource):
    read_scope = write_scope = "admin"

    def post(self, key_id: int) -> dict:
        with platform().db.session() as session:
            return auth.revoke_or_404(session=session, key_id=key_id)
