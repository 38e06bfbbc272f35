"""gunicorn's own error answers (a request line over 4094 bytes: 414; over 100 header fields or one over 8190
bytes: 431; a malformed request: 400) in the API's JSON shape instead of gunicorn's HTML page.

Those answers are written by gunicorn before the app sees the request, so the app cannot shape them; `install`
replaces the function gunicorn writes them with. The app calls it when gunicorn loads it (app.api.init_api), in
every gunicorn worker process, before the first request.
"""

from __future__ import annotations

import json
from typing import Any

CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
         431: "headers_too_large", 500: "internal", 501: "not_implemented"}
MESSAGES = {
    414: "the request line is too long (gunicorn's limit_request_line, 4094 bytes by default)",
    431: "the request headers are too large (gunicorn's limit_request_fields / limit_request_field_size)",
    500: "internal error",
}


def json_error(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP response gunicorn sends for an error it answers itself."""
    body = json.dumps({"error": {"code": CODES.get(status, "bad_request"),
                                 "message": MESSAGES.get(status) or message or reason}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    from gunicorn import util

    util.write_nonblock(sock, json_error(status_int, reason, mesg))


def install() -> None:
    """Make gunicorn write its error answers as JSON (idempotent)."""
    from gunicorn import util

    util.write_error = write_error
