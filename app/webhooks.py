"""Standard Webhooks signing and verification (https://www.standardwebhooks.com), standard library only.

The platform signs every delivery with `sign`; a receiver checks one with `verify` (or with the
`standardwebhooks` package: `Webhook(secret).verify(body, headers)` accepts the same messages).

    from app.webhooks import verify
    event = verify(secret, request.headers, request.get_data())   # raises WebhookVerificationError
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the decoded secret."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(signing_secrets: Iterable[str], msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three headers of one delivery; several secrets (during a rotation) give space-separated signatures."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(s, msg_id, ts, body) for s in signing_secrets),
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, tolerance: float = 300) -> Any:
    """Check a delivery's signature and timestamp; return the parsed JSON body."""
    data = body.encode() if isinstance(body, str) else body
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not (msg_id and ts and sigs):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(ts)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if abs(time.time() - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, data).encode()
    if not any(hmac.compare_digest(expected, s.encode()) for s in sigs.split(" ") if s.startswith("v1,")):
        raise WebhookVerificationError("no matching signature")
    return json.loads(data)
