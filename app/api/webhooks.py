from __future__ import annotations

from app.api.base import AuthResource
from app.platform import platform
from app.schemas import (
    DEFAULT_WEBHOOK_EVENTS,
    WebhookDefault,
    check_webhook_url,
    delivery_public,
    iso,
    parse,
)
from app.services import webhooks


class WebhookDefaultItem(AuthResource):
    """The webhook URL and event filter copied onto jobs that name none."""

    def get(self) -> dict:
        p = platform()
        found = p.lookups.default_webhook(p.db, self.owner_id)
        url, events = found or (None, list(DEFAULT_WEBHOOK_EVENTS))
        return {"url": url, "events": events}

    def put(self) -> dict:
        p = platform()
        body = self.json_body()
        spec = parse(WebhookDefault, body)
        if spec.url is not None:
            check_webhook_url(spec.url, p.settings, "url")
        with p.db.session() as session:
            row = webhooks.set_default_webhook(session, self.owner_id, spec.url, list(spec.events))
            return {"url": row.url, "events": row.events}


class WebhookSecret(AuthResource):
    def get(self) -> dict:
        with platform().db.session() as session:
            return {"secret": webhooks.owner_settings(session, self.owner_id).secret}


class WebhookSecretRotate(AuthResource):
    def post(self) -> dict:
        with platform().db.session() as session:
            row = webhooks.rotate_secret(session, self.owner_id)
            return {"secret": row.secret, "previous_secret_expires_at": iso(row.previous_expires_at)}


class JobWebhookDeliveries(AuthResource):
    def get(self, job_id: str) -> dict:
        limit, cursor = self.page_args()
        with platform().db.session() as session:
            rows, next_cursor = webhooks.list_deliveries(session, self.owner_id, job_id, limit=limit, cursor=cursor)
            return {"data": [delivery_public(d, attempts) for d, attempts in rows], "next_cursor": next_cursor}


class WebhookRedeliver(AuthResource):
    def post(self, delivery_id: str) -> tuple[dict, int]:
        with platform().db.session() as session:
            row, attempts = webhooks.redeliver(session, self.owner_id, delivery_id)
            return delivery_public(row, attempts), 202
