"""The HTTP side of webhooks: which URLs may be called (SSRF guard) and one POST to a checked address.

`check_url` resolves the host and refuses private, loopback, link-local (cloud metadata at 169.254.169.254),
shared, reserved and multicast addresses unless private targets are allowed. `post` connects to the address
that passed the check (no second lookup a DNS rebinding could answer differently), follows no redirect and
succeeds only on 2xx.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class UnsafeUrl(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the resolved IP to connect to


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, *, allow_private: bool) -> Target:
    """Parse and resolve a webhook URL; raise UnsafeUrl with a message a user can act on."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("the URL must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("the URL must not carry credentials")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"the host {host!r} does not resolve ({exc})") from None
    addresses = [str(info[4][0]) for info in infos]
    if not allow_private:
        bad = [a for a in addresses if not _public(a)]
        if bad:
            raise UnsafeUrl(f"the host {host!r} resolves to a private or reserved address ({bad[0]}); "
                            "webhooks go to public addresses only")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, addresses[0])


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]  # certificate checked for host


@dataclass(frozen=True)
class Response:
    status: int | None  # None: no HTTP answer (refused, timeout, TLS error, unsafe address)
    error: str | None
    latency_ms: int
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool, timeout: float) -> Response:
    t0 = time.monotonic()

    def ms() -> int:
        return int((time.monotonic() - t0) * 1000)

    try:
        target = check_url(url, allow_private=allow_private)
    except UnsafeUrl as exc:
        return Response(None, f"refused: {exc}", ms())
    cls = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = cls(target, timeout)
    try:
        conn.request("POST", target.path, body=body, headers={
            **headers, "Content-Type": "application/json", "User-Agent": "llmos-webhooks/1"})
        resp = conn.getresponse()
        resp.read(65536)
        error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        return Response(resp.status, error, ms(), resp.getheader("Retry-After"))
    except (OSError, http.client.HTTPException) as exc:
        return Response(None, f"{exc.__class__.__name__}: {exc}"[:500], ms())
    finally:
        conn.close()
