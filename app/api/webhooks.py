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
from app.secrets_box import box_for
from app.services import webhooks


class WebhookDefaultItem(AuthResource):
    """The webhook URL and event filter copied onto jobs that name none."""

    read_scope = write_scope = "webhooks"

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
            row = webhooks.set_default_webhook(session, self.owner_id, spec.url, list(spec.events),
                                               box=box_for(p.settings))
            return {"url": row.url, "events": row.events}


class WebhookSecret(AuthResource):
    read_scope = write_scope = "webhooks"

    def get(self) -> dict:
        p = platform()
        with p.db.session() as session:  # the one place the secret is shown; stored sealed (app.secrets_box)
            return {"secret": webhooks.owner_secret(session, self.owner_id, box=box_for(p.settings))}


class WebhookSecretRotate(AuthResource):
    read_scope = write_scope = "webhooks"

    def post(self) -> dict:
        p = platform()
        with p.db.session() as session:
            secret, expires = webhooks.rotate_secret(session, self.owner_id, box=box_for(p.settings))
            return {"secret": secret, "previous_secret_expires_at": iso(expires)}


class JobWebhookDeliveries(AuthResource):
    read_scope = write_scope = "webhooks"

    def get(self, job_id: str) -> dict:
        limit, cursor = self.page_args()
        with platform().db.session() as session:
            rows, next_cursor = webhooks.list_deliveries(session, self.owner_id, job_id, limit=limit, cursor=cursor)
            return {"data": [delivery_public(d, attempts) for d, attempts in rows], "next_cursor": next_cursor}


class WebhookRedeliver(AuthResource):
    read_scope = write_scope = "webhooks"

    def post(self, delivery_id: str) -> tuple[dict, int]:
        with platform().db.session() as session:
            row, attempts = webhooks.redeliver(session, self.owner_id, delivery_id)
            return delivery_public(row, attempts), 202
