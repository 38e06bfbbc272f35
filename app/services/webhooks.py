"""Webhook deliveries: written with the job's state change, sent by the scheduler's sweep, retried from the
database.

- The lifecycle core (app.jobs.lifecycle) adds a `webhook_deliveries` row inside a transition's transaction
  when the job has a webhook whose filter takes the event; `batch_event` does the same for a batch's end.
- `sweep` claims due rows (`next_attempt_at <= now`, FOR UPDATE SKIP LOCKED on PostgreSQL) by pushing
  `next_attempt_at` past a lease, sends them from a small thread pool and records every attempt. A worker that
  dies mid-send leaves the row to be picked up again when the lease ends: at least once, same `webhook-id`.
- A job's deliveries go out in order (`seq`): a row waits while an earlier one of its job is still pending.
- Retries wait in the database (`next_attempt_at`), never in a broker countdown.
- Signing secrets are stored sealed (app.secrets_box) and opened only to sign or to show the owner; a plaintext
  one (written before migration 0009) or one sealed under an older key is sealed again when it is read, by a
  compare-and-set so a concurrent rotation always wins.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from app import webhook_http
from app import webhooks as signing
from app.db import Database
from app.errors import ApiError, NotFound
from app.models import Batch, Job, JobEvent, WebhookAttempt, WebhookDelivery, WebhookSettings, utcnow
from app.schemas import DEFAULT_WEBHOOK_EVENTS, iso
from app.secrets_box import SecretBox, SecretKeyError, box_for
from app.services.lookups import forget
from app.services.pagination import page_key, paginate_key
from app.settings import Settings

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ROTATION_OVERLAP = timedelta(hours=24)
LEASE_EXTRA_S = 60.0
MAX_RETRY_AFTER_S = 24 * 3600.0


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# ---- written with the job's state change ---------------------------------------------------------------


def batch_event(session: Session, batch_id: str, type_: str) -> WebhookDelivery | None:
    """Queue a batch's end (batch.succeeded | batch.failed | batch.cancelled) for its webhook, if it has one."""
    from app.batch_schemas import batch_public

    batch = session.get(Batch, batch_id, populate_existing=True)
    if batch is None or not batch.webhook:
        return None
    now = utcnow()
    delivery = WebhookDelivery(
        id=_id("whd"), batch_id=batch_id, seq=1, owner_id=batch.owner_id, event_type=type_, url=batch.webhook,
        payload={"type": type_, "timestamp": iso(now), "data": batch_public(batch)}, webhook_id=_id("msg"),
        status=PENDING, attempts=0, next_attempt_at=now, created_at=now,
    )
    session.add(delivery)
    return delivery


# ---- owner settings: default webhook and secrets -------------------------------------------------------


def owner_settings(session: Session, owner_id: int, *, box: SecretBox) -> WebhookSettings:
    """The owner's row, created (with a new, sealed secret) on first use."""
    row = session.get(WebhookSettings, owner_id)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = WebhookSettings(owner_id=owner_id, secret=box.seal(signing.new_secret()),
                                  events=list(DEFAULT_WEBHOOK_EVENTS))
            session.add(row)
    except IntegrityError:  # created concurrently
        row = session.get(WebhookSettings, owner_id, populate_existing=True)
        assert row is not None
    return row


def _open(session: Session, row: WebhookSettings, column: str, box: SecretBox) -> str | None:
    """One stored secret in the clear; sealed again (under the first key) when it was stale."""
    stored: str | None = getattr(row, column)
    if stored is None:
        return None
    opened = box.open(stored)
    if opened.stale:
        col = getattr(WebhookSettings, column)
        session.execute(update(WebhookSettings)
                        .where(WebhookSettings.owner_id == row.owner_id, col == stored)
                        .values({column: box.seal(opened.value)})
                        .execution_options(synchronize_session=False))
    return opened.value


def owner_secret(session: Session, owner_id: int, *, box: SecretBox) -> str:
    """The owner's current signing secret in the clear (GET /webhooks/secret shows it to its owner)."""
    try:
        secret = _open(session, owner_settings(session, owner_id, box=box), "secret", box)
    except SecretKeyError as exc:
        raise _key_mismatch(exc) from None
    assert secret is not None
    return secret


def _key_mismatch(exc: SecretKeyError) -> ApiError:
    """The server's key cannot open the stored secret: an operator's error, said plainly (no secret in it)."""
    return ApiError(str(exc), code="secret_key_mismatch", status=500)


def set_default_webhook(session: Session, owner_id: int, url: str | None, events: list[str], *,
                        box: SecretBox) -> WebhookSettings:
    row = owner_settings(session, owner_id, box=box)
    row.url, row.events = url, events
    forget(session, f"webhook:{owner_id}")
    return row


def rotate_secret(session: Session, owner_id: int, *, box: SecretBox) -> tuple[str, datetime]:
    """A new secret; the old one keeps signing (a second signature) for 24 h so receivers can switch.
    Returns (the new secret in the clear, when the old one stops signing)."""
    row = session.get(WebhookSettings, owner_id, with_for_update=True) or owner_settings(session, owner_id, box=box)
    try:
        current = box.open(row.secret).value
    except SecretKeyError as exc:
        raise _key_mismatch(exc) from None
    new = signing.new_secret()
    expires = utcnow() + ROTATION_OVERLAP
    row.previous_secret, row.previous_expires_at = box.seal(current), expires
    row.secret = box.seal(new)
    log.info("owner=%s webhook secret rotated", owner_id)
    return new, expires


def signing_secrets(session: Session, row: WebhookSettings, now: datetime, *, box: SecretBox) -> list[str]:
    """The secrets a delivery is signed with now, in the clear: the current one, and the previous one during
    the overlap after a rotation."""
    current = _open(session, row, "secret", box)
    assert current is not None
    keys = [current]
    until = row.previous_expires_at
    if row.previous_secret and until is not None and until > now:
        previous = _open(session, row, "previous_secret", box)
        assert previous is not None
        keys.append(previous)
    return keys


# ---- reading and redelivery ----------------------------------------------------------------------------


def list_deliveries(session: Session, owner_id: int, job_id: str, *, limit: int, cursor: str | None,
                    ) -> tuple[list[tuple[WebhookDelivery, list[WebhookAttempt]]], str | None]:
    """A job's deliveries in the order they go out (seq), each with its attempts; one page of them."""
    job = session.get(Job, job_id)
    if job is None or job.owner_id != owner_id:
        raise NotFound(f"no job {job_id!r}", code="job_not_found")
    stmt = paginate_key(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id), key=WebhookDelivery.seq,
                        cursor=cursor, limit=limit)
    rows, next_cursor = page_key(list(session.scalars(stmt)), limit, "seq")
    attempts: dict[str, list[WebhookAttempt]] = {r.id: [] for r in rows}
    if rows:
        for a in session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(attempts)))
                                 .order_by(WebhookAttempt.id)):
            attempts[a.delivery_id].append(a)
    return [(r, attempts[r.id]) for r in rows], next_cursor


def redeliver(session: Session, owner_id: int, delivery_id: str) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    """Send again soon with the same webhook-id, with a fresh retry schedule."""
    row = session.get(WebhookDelivery, delivery_id)
    if row is None or row.owner_id != owner_id:
        raise NotFound(f"no webhook delivery {delivery_id!r}", code="webhook_delivery_not_found")
    row.status, row.attempts, row.next_attempt_at, row.delivered_at = PENDING, 0, utcnow(), None
    attempts = list(session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
                                    .order_by(WebhookAttempt.id)))
    return row, attempts


# ---- sending -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    id: str
    job_id: str  # the job's id, or the batch's for a batch's delivery
    owner_id: int
    url: str
    payload: dict[str, Any]
    webhook_id: str


def claim_due(*, db: Database, lease_s: float, batch: int) -> list[Due]:
    """Take due deliveries whose job has no earlier pending one, leasing them by moving next_attempt_at on."""
    now = utcnow()
    earlier = aliased(WebhookDelivery)
    waits_for_earlier = exists().where(earlier.job_id == WebhookDelivery.job_id, earlier.seq < WebhookDelivery.seq,
                                       earlier.status == PENDING)
    with db.session() as session:
        rows = list(session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now, ~waits_for_earlier)
            .order_by(WebhookDelivery.next_attempt_at).limit(batch)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        ))
        for row in rows:
            row.next_attempt_at = now + timedelta(seconds=lease_s)
        return [Due(r.id, r.job_id or r.batch_id or "", r.owner_id, r.url, dict(r.payload), r.webhook_id) for r in rows]


def retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def next_delay(settings: Settings, attempts: int, resp: webhook_http.Response) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None when the schedule is used up."""
    schedule = settings.webhook_retry_schedule
    if attempts > len(schedule):
        return None
    asked = retry_after_s(resp.retry_after) if resp.status in (429, 503) else None
    if asked is not None:
        return min(asked, MAX_RETRY_AFTER_S)
    return schedule[attempts - 1] * random.uniform(1.0, 1.25)


def deliver(*, db: Database, settings: Settings, due: Due) -> bool:
    """One attempt: sign, POST, record. Returns True when the receiver answered 2xx."""
    body = json.dumps(due.payload, separators=(",", ":")).encode()
    try:
        box = box_for(settings)
        with db.session() as session:
            keys = signing_secrets(session, owner_settings(session, due.owner_id, box=box), utcnow(), box=box)
    except SecretKeyError as exc:  # retried on the schedule: the operator may put the old key back
        log.error("job=%s webhook not sent: %s", due.job_id, exc)
        record(db=db, settings=settings, due=due, resp=webhook_http.Response(None, f"not sent: {exc}", 0))
        return False
    resp = webhook_http.post(due.url, body, signing.headers(keys, due.webhook_id, body),
                             allow_private=settings.webhook_allow_private, timeout=settings.webhook_timeout_s)
    record(db=db, settings=settings, due=due, resp=resp)
    return resp.ok


def record(*, db: Database, settings: Settings, due: Due, resp: webhook_http.Response) -> None:
    now = utcnow()
    with db.session() as session:
        session.add(WebhookAttempt(delivery_id=due.id, created_at=now, status_code=resp.status,
                                   latency_ms=resp.latency_ms, error=resp.error))
        row = session.get(WebhookDelivery, due.id)
        if row is None:  # the job was deleted meanwhile
            return
        row.attempts += 1
        row.last_status_code, row.last_error = resp.status, resp.error
        if resp.ok:
            row.status, row.delivered_at, row.next_attempt_at = DELIVERED, now, None
            log.info("job=%s webhook %s delivered (%s, %d ms)", due.job_id, row.event_type, resp.status,
                     resp.latency_ms)
            return
        if resp.status == 410:
            _give_up_url(session, due, now)
            return
        delay = next_delay(settings, row.attempts, resp)
        if delay is None:
            row.status, row.next_attempt_at = FAILED, None
            _failed_event(session, row, f"gave up after {row.attempts} attempts: {resp.error}")
            log.warning("job=%s webhook %s failed after %d attempts: %s", due.job_id, row.event_type, row.attempts,
                        resp.error)
        else:
            row.next_attempt_at = now + timedelta(seconds=delay)
            log.info("job=%s webhook %s attempt %d failed (%s); next in %.1fs", due.job_id, row.event_type,
                     row.attempts, resp.error, delay)


def _give_up_url(session: Session, due: Due, now: datetime) -> None:
    """410 Gone: this URL wants no more; every pending delivery of the owner to it fails now."""
    rows = list(session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.owner_id == due.owner_id, WebhookDelivery.url == due.url, WebhookDelivery.status == PENDING)))
    for row in rows:
        row.status, row.next_attempt_at = FAILED, None
        if row.id != due.id:
            row.last_error = "not sent: the URL answered 410 Gone to another delivery"
        _failed_event(session, row, "the receiver answered 410 Gone; no more retries to this URL")
    log.warning("job=%s webhook URL answered 410 Gone; %d pending delivery(ies) failed", due.job_id, len(rows))


def _failed_event(session: Session, row: WebhookDelivery, message: str) -> None:
    if row.job_id is None:  # a batch has no event timeline; the delivery row keeps the failure
        return
    session.add(JobEvent(job_id=row.job_id, type="webhook_failed", message=message,
                         data={"delivery_id": row.id, "event": row.event_type, "url": row.url,
                               "status_code": row.last_status_code}))


def sweep(*, db: Database, settings: Settings, pool: ThreadPoolExecutor, rounds: int = 10) -> int:
    """Send what is due; go round again at once while there was something (a job's next event follows its
    previous one without waiting for the next sweep). Returns the number delivered."""
    delivered = 0
    lease_s = settings.webhook_timeout_s + LEASE_EXTRA_S
    for _ in range(rounds):
        due = claim_due(db=db, lease_s=lease_s, batch=settings.webhook_concurrency * 4)
        if not due:
            break
        delivered += sum(pool.map(lambda d: deliver(db=db, settings=settings, due=d), due))
    return delivered

