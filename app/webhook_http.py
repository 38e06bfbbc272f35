"""The HTTP side of webhooks: which URLs may be called (SSRF guard) and one POST to a checked address.

`check_url` resolves the host and refuses every address that is not globally routable, unless private targets
are allowed (`LLMOS_WEBHOOK_ALLOW_PRIVATE`, for tests and closed networks): private, loopback, link-local (cloud
metadata at 169.254.169.254), shared (CGNAT 100.64/10), the IETF special-purpose blocks (192.0.0.0/24 and its
2001::/23 twin), benchmarking, documentation, multicast, reserved and unassigned space. IPv6 forms that carry an
IPv4 address are judged by that address, so `::ffff:127.0.0.1`, `64:ff9b::7f00:1` (NAT64) and `2002:7f00:1::`
(6to4) are loopback; 64:ff9b::8.8.8.8 goes through (DNS64 networks answer that for IPv4-only hosts). The
deprecated IPv4-compatible form (`::7f00:1`), local-use NAT64 (64:ff9b:1::/48) and Teredo (2001::/32) are refused
whatever they carry. Only global unicast IPv6 (2000::/3) is accepted at all.

`post` checks the URL again at delivery and connects to the address that passed the check (no second lookup a
DNS rebinding could answer differently; the connection checks that pinned address once more before it opens),
follows no redirect and succeeds only on 2xx.
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


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# IANA IPv4 Special-Purpose Address Registry (not globally reachable), multicast and reserved space.
_V4_REFUSED: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("'this network'", _nets("0.0.0.0/8")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("shared address space (carrier-grade NAT)", _nets("100.64.0.0/10")),
    ("loopback", _nets("127.0.0.0/8")),
    ("link-local (cloud metadata lives here)", _nets("169.254.0.0/16")),
    ("IETF protocol assignment", _nets("192.0.0.0/24")),
    ("documentation", _nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")),
    ("6to4 relay anycast (deprecated)", _nets("192.88.99.0/24")),
    ("benchmarking", _nets("198.18.0.0/15")),
    ("multicast", _nets("224.0.0.0/4")),
    ("reserved", _nets("240.0.0.0/4")),
)
# Inside global unicast 2000::/3, the blocks that are not globally reachable.
_V6_REFUSED: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("Teredo", _nets("2001::/32")),
    ("IETF protocol assignment", _nets("2001::/23")),
    ("documentation", _nets("2001:db8::/32", "3fff::/20")),
)
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_V6_NAMES: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("unspecified", _nets("::/128")),
    ("loopback", _nets("::1/128")),
    ("IPv4-compatible (deprecated)", (_V4_COMPATIBLE,)),
    ("local-use NAT64", (_NAT64_LOCAL,)),
    ("discard-only", _nets("100::/64")),
    ("unique local (private)", _nets("fc00::/7")),
    ("link-local", _nets("fe80::/10")),
    ("site-local (deprecated)", _nets("fec0::/10")),
    ("multicast", _nets("ff00::/8")),
)


def _named(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
           table: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...]) -> str | None:
    for name, nets in table:
        if any(ip in net for net in nets):
            return name
    return None


def _v4_refusal(ip: ipaddress.IPv4Address) -> str | None:
    return _named(ip, _V4_REFUSED) or (None if ip.is_global else "not globally routable")


def refusal(address: str) -> str | None:
    """Why a webhook may not go to this IP address, or None when it is globally routable."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_refusal(ip)
    carried: ipaddress.IPv4Address | None = None
    if ip.ipv4_mapped is not None:
        carried = ip.ipv4_mapped
    elif ip in _NAT64:
        carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    elif ip in _SIX_TO_FOUR:
        carried = ip.sixtofour
    if carried is not None:
        why = _v4_refusal(carried)
        return f"carries IPv4 {carried}, {why}" if why else None
    if ip not in _GLOBAL_UNICAST:
        return _named(ip, _V6_NAMES) or "outside IPv6 global unicast (2000::/3)"
    return _named(ip, _V6_REFUSED) or (None if ip.is_global else "not globally routable")


def _public(address: str) -> bool:
    return refusal(address) is None


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
        for address in addresses:
            why = refusal(address)
            if why:
                raise UnsafeUrl(f"the host {host!r} resolves to {address} ({why}); "
                                "webhooks go to globally routable addresses only")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, addresses[0])


def _open(address: str, port: int, timeout: float | None, allow_private: bool) -> socket.socket:
    """A TCP connection to the pinned IP literal (no name lookup here), checked once more just before it opens."""
    if not allow_private:
        why = refusal(address)
        if why:
            raise UnsafeUrl(f"the pinned address {address} is refused ({why})")
    return socket.create_connection((address, port), timeout)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float, allow_private: bool) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address, self._allow_private = target.address, allow_private

    def connect(self) -> None:
        self.sock = _open(self._address, self.port, self.timeout, self._allow_private)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float, allow_private: bool) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address, self._allow_private = target.address, allow_private

    def connect(self) -> None:
        sock = _open(self._address, self.port, self.timeout, self._allow_private)
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
    conn = cls(target, timeout, allow_private)
    try:
        conn.request("POST", target.path, body=body, headers={
            **headers, "Content-Type": "application/json", "User-Agent": "llmos-webhooks/1"})
        resp = conn.getresponse()
        resp.read(65536)
        error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        return Response(resp.status, error, ms(), resp.getheader("Retry-After"))
    except UnsafeUrl as exc:
        return Response(None, f"refused: {exc}", ms())
    except (OSError, http.client.HTTPException) as exc:
        return Response(None, f"{exc.__class__.__name__}: {exc}"[:500], ms())
    finally:
        conn.close()
