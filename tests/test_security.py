"""Webhook SSRF guard and secrets at rest.

SSRF: every address that is not globally routable is refused at submit (422) and again at delivery, on the
address the connection is pinned to; IPv6 forms that carry IPv4 are judged by the IPv4 they carry.
Secrets: webhook signing secrets are stored sealed under LLMOS_SECRET_KEY; the raw rows hold no plaintext, the
signatures still verify with the `standardwebhooks` package, old plaintext rows and rotated keys are sealed again.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import text

from app import secrets_box, webhook_http
from app.secrets_box import SecretBox, SecretKeyError, box_for, parse_keys, reseal
from app.settings import load_settings
from tests.conftest import auth, make_key
from tests.test_webhooks import Receiver, deliveries, job_body, verified

# ---- SSRF: one case per family -------------------------------------------------------------------------

REFUSED = {
    # IPv4
    "this network": "0.0.0.1",
    "private 10/8": "10.1.2.3",
    "private 172.16/12": "172.31.255.254",
    "private 192.168/16": "192.168.0.1",
    "CGNAT 100.64/10": "100.64.0.1",
    "loopback": "127.0.0.2",
    "link-local metadata": "169.254.169.254",
    "IETF special purpose 192.0.0.8": "192.0.0.8",
    "IETF special purpose 192.0.0.170 (NAT64 discovery)": "192.0.0.170",
    "documentation TEST-NET-1": "192.0.2.10",
    "documentation TEST-NET-2": "198.51.100.7",
    "documentation TEST-NET-3": "203.0.113.9",
    "6to4 relay anycast": "192.88.99.1",
    "benchmarking": "198.19.0.1",
    "multicast": "224.0.0.251",
    "reserved 240/4": "240.0.0.1",
    "broadcast": "255.255.255.255",
    # IPv6
    "v6 unspecified": "::",
    "v6 loopback": "::1",
    "IPv4-mapped loopback": "::ffff:127.0.0.1",
    "IPv4-mapped metadata": "::ffff:169.254.169.254",
    "IPv4-compatible loopback": "::7f00:1",
    "IPv4-compatible public (deprecated form)": "::808:808",
    "NAT64 loopback": "64:ff9b::7f00:1",
    "NAT64 private": "64:ff9b::a00:1",
    "NAT64 metadata": "64:ff9b::a9fe:a9fe",
    "local-use NAT64": "64:ff9b:1::808:808",
    "6to4 loopback": "2002:7f00:1::1",
    "6to4 private": "2002:c0a8:101::",
    "Teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "IETF protocol assignments 2001::/23": "2001:2::1",
    "v6 documentation 2001:db8::/32": "2001:db8::1",
    "v6 documentation 3fff::/20": "3fff::1",
    "discard-only 100::/64": "100::1",
    "unique local": "fd00::1",
    "link-local": "fe80::1",
    "site-local": "fec0::1",
    "v6 multicast": "ff02::1",
    "outside 2000::/3 (SRv6 SIDs)": "5f00::1",
}
ALLOWED = {
    "public v4": "8.8.8.8",
    "public v6": "2606:4700:4700::1111",
    "IPv4-mapped public": "::ffff:8.8.8.8",
    "NAT64 public (DNS64 networks)": "64:ff9b::808:808",
    "6to4 public": "2002:808:808::1",
}


def url_of(address: str, port: int = 80) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/hook"


@pytest.mark.parametrize("address", REFUSED.values(), ids=REFUSED.keys())
def test_not_globally_routable_refused(address: str) -> None:
    assert webhook_http.refusal(address)
    with pytest.raises(webhook_http.UnsafeUrl, match="globally routable"):
        webhook_http.check_url(url_of(address), allow_private=False)
    assert webhook_http.check_url(url_of(address), allow_private=True).address  # the test setting lets it by


@pytest.mark.parametrize("address", ALLOWED.values(), ids=ALLOWED.keys())
def test_globally_routable_allowed(address: str) -> None:
    assert webhook_http.refusal(address) is None
    assert webhook_http.check_url(url_of(address), allow_private=False).address == address


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names this test resolves: host -> addresses (the real resolver answers every other name)."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in table:
            out = []
            for a in table[host]:
                fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                out.append((fam, socket.SOCK_STREAM, 6, "", (a, int(port or 0))))
            return out
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


def test_a_name_is_judged_by_every_address_it_resolves_to(dns: dict[str, list[str]]) -> None:
    dns["hooks.example.test"] = ["8.8.8.8", "64:ff9b::a9fe:a9fe"]
    with pytest.raises(webhook_http.UnsafeUrl, match=r"64:ff9b::a9fe:a9fe \(carries IPv4 169.254.169.254"):
        webhook_http.check_url("https://hooks.example.test/h", allow_private=False)
    dns["hooks.example.test"] = ["8.8.8.8", "2606:4700:4700::1111"]
    assert webhook_http.check_url("https://hooks.example.test/h", allow_private=False).address == "8.8.8.8"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def test_delivery_checks_again_and_connects_to_the_pinned_address(dns: dict[str, list[str]], receiver: Receiver,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: a name public at submit and loopback at delivery is refused at delivery; a delivery
    connects to the address that passed the check, with no second lookup."""
    url = f"http://rebind.example.test:{receiver.port}/hook"
    dns["rebind.example.test"] = ["93.184.215.14"]
    webhook_http.check_url(url, allow_private=False)  # what the API does at submit: accepted
    dns["rebind.example.test"] = ["127.0.0.1"]
    resp = webhook_http.post(url, b"{}", {}, allow_private=False, timeout=2)
    assert resp.status is None and resp.error and resp.error.startswith("refused:") and "loopback" in resp.error
    assert receiver.requests == []

    # the pinned address itself is checked once more just before the connection opens
    target = webhook_http.Target("http", "pinned.example.test", receiver.port, "/hook", "::ffff:127.0.0.1")
    conn = webhook_http._PinnedHTTP(target, 2, allow_private=False)
    with pytest.raises(webhook_http.UnsafeUrl, match="pinned address"):
        conn.connect()

    lookups: list[str] = []
    dns["pinned.example.test"] = ["127.0.0.1"]
    real_fake = socket.getaddrinfo

    def counting(host: Any, *a: Any, **k: Any) -> Any:
        lookups.append(host)
        return real_fake(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    resp = webhook_http.post(f"http://pinned.example.test:{receiver.port}/hook", b"{}", {}, allow_private=True,
                             timeout=5)
    assert resp.ok, resp
    # the name is looked up once, by the check; the connection opens the checked IP literal (no DNS for that)
    assert lookups == ["pinned.example.test", "127.0.0.1"]
    assert receiver.requests[-1]["headers"]["Host"] == f"pinned.example.test:{receiver.port}"


@pytest.fixture
def embedded(make_app: Callable[..., Any]) -> Callable[..., Any]:
    """An app on the embedded default (SQLite, no broker service), migrated and seeded."""
    from app.services import registry
    from migrations import upgrade

    def _make(**over: Any) -> Any:
        app = make_app(**over)
        p = app.extensions["llmos"]
        upgrade(p.settings.database_url)
        with p.db.session() as s:
            registry.seed_registry(session=s)
        return app

    return _make


def sweep(app: Any) -> int:
    from app.services import webhooks

    p = app.extensions["llmos"]
    with ThreadPoolExecutor(2) as pool:
        return webhooks.sweep(db=p.db, settings=p.settings, pool=pool)


@pytest.mark.parametrize("address", ["127.0.0.1", "64:ff9b::7f00:1", "::ffff:10.0.0.1", "192.0.0.8"])
def test_refused_at_submit(embedded: Callable[..., Any], address: str) -> None:
    app = embedded()
    client, key = app.test_client(), make_key(app, "alice")
    r = client.post("/jobs", json=job_body(webhook=url_of(address)), headers=auth(key))
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "webhook", r.get_json()
    assert "globally routable" in r.get_json()["error"]["message"]
    r = client.put("/webhooks/default", json={"url": url_of(address)}, headers=auth(key))
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "url"


def test_rebinding_refused_at_delivery_through_the_sweep(embedded: Callable[..., Any], dns: dict[str, list[str]],
                                                         receiver: Receiver) -> None:
    app = embedded(webhook_retry_schedule_s="60")
    client, key = app.test_client(), make_key(app, "alice")
    dns["hooks.example.test"] = ["93.184.215.14"]
    job = client.post("/jobs", json=job_body(webhook=f"http://hooks.example.test:{receiver.port}/hook"),
                      headers=auth(key)).get_json()
    assert client.post(f"/jobs/{job['id']}/cancel", headers=auth(key)).status_code == 200
    dns["hooks.example.test"] = ["64:ff9b::7f00:1"]  # the name now points home
    assert sweep(app) == 0
    [d] = deliveries(client, key, job["id"])
    assert d["attempts"] == 1 and d["last_error"].startswith("refused:") and "127.0.0.1" in d["last_error"]
    assert receiver.requests == []


# ---- secrets at rest -----------------------------------------------------------------------------------


def raw_secrets(app: Any) -> list[tuple[Any, ...]]:
    with app.extensions["llmos"].db.engine.connect() as c:
        return [tuple(r) for r in c.execute(text("SELECT owner_id, secret, previous_secret FROM webhook_settings"))]


def assert_sealed(rows: list[tuple[Any, ...]], *plain: str) -> None:
    for row in rows:
        for value in row[1:]:
            if value is None:
                continue
            assert value.startswith("fernet:"), value[:12]
            for p in plain:
                assert p not in value and p.removeprefix("whsec_") not in value


def test_secrets_sealed_at_rest_and_signatures_verify(embedded: Callable[..., Any], receiver: Receiver,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = embedded(webhook_allow_private=True, secret_key=Fernet.generate_key().decode())
    client, key = app.test_client(), make_key(app, "alice")
    old = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    assert_sealed(raw_secrets(app), old)
    new = client.post("/webhooks/secret/rotate", headers=auth(key)).get_json()["secret"]
    assert old != new and client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"] == new
    [(_, secret, previous)] = raw_secrets(app)
    assert secret and previous
    assert_sealed(raw_secrets(app), old, new)

    job = client.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(key)).get_json()
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert sweep(app) == 1
    [req] = receiver.ok()
    assert len(req["headers"]["webhook-signature"].split(" ")) == 2
    assert verified(new, req)["data"]["id"] == job["id"] and verified(old, req)["data"]["id"] == job["id"]

    # never in logs, nor in responses other than the secret endpoints
    shown = [client.get("/webhooks/default", headers=auth(key)), client.get(f"/jobs/{job['id']}", headers=auth(key)),
             client.get(f"/jobs/{job['id']}/webhook-deliveries", headers=auth(key))]
    for s in (old, new, old.removeprefix("whsec_"), new.removeprefix("whsec_")):
        assert s not in caplog.text
        assert all(s not in r.get_data(as_text=True) for r in shown)
    assert_sealed(raw_secrets(app), old, new)


def test_plaintext_rows_from_before_0009_are_sealed_on_first_use(embedded: Callable[..., Any],
                                                                 receiver: Receiver) -> None:
    from app import webhooks as signing

    app = embedded(webhook_allow_private=True)
    client, alice, bob = app.test_client(), make_key(app, "alice"), make_key(app, "bob")
    client.get("/webhooks/secret", headers=auth(alice))
    client.get("/webhooks/secret", headers=auth(bob))
    legacy = {name: signing.new_secret() for name in ("alice", "bob")}
    db = app.extensions["llmos"].db
    with db.engine.begin() as c:  # what an install upgraded from 0008 holds
        for name, secret in legacy.items():
            c.execute(text("UPDATE webhook_settings SET secret = :s WHERE owner_id = "
                           "(SELECT id FROM owners WHERE name = :n)"), {"s": secret, "n": name})
    assert {r[1] for r in raw_secrets(app)} == set(legacy.values())

    assert client.get("/webhooks/secret", headers=auth(alice)).get_json()["secret"] == legacy["alice"]
    sealed = {r[1].startswith("fernet:") for r in raw_secrets(app)}
    assert sealed == {True, False}  # alice's, read once, is sealed; bob's waits

    job = client.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(bob)).get_json()
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(bob))
    assert sweep(app) == 1  # signing with bob's plaintext secret seals it too
    assert verified(legacy["bob"], receiver.ok()[0])["data"]["id"] == job["id"]
    assert_sealed(raw_secrets(app), *legacy.values())
    assert reseal(db=db, box=box_for(app.extensions["llmos"].settings)) == 0


def test_key_rotation(embedded: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:

    k1, k2, k3 = (Fernet.generate_key().decode() for _ in range(3))
    app1 = embedded(webhook_allow_private=True, secret_key=k1, webhook_retry_schedule_s="60")
    client, key = app1.test_client(), make_key(app1, "alice")
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    [(_, sealed_k1, _)] = raw_secrets(app1)
    assert SecretBox(parse_keys(k1)).open(sealed_k1).value == secret

    # the new key first, the old one after it: everything still opens, and what is read is sealed again
    settings = app1.extensions["llmos"].settings
    app2 = embedded(webhook_allow_private=True, secret_key=f"{k2},{k1}", database_url=settings.database_url)
    c2 = app2.test_client()
    assert c2.get("/webhooks/secret", headers=auth(key)).get_json()["secret"] == secret
    [(_, sealed_k2, _)] = raw_secrets(app2)
    assert sealed_k2 != sealed_k1 and SecretBox(parse_keys(k2)).open(sealed_k2) == secrets_box.Opened(secret, False)

    # the offline pass: `llmos secrets reseal` with the environment of the processes
    with app2.extensions["llmos"].db.engine.begin() as c:
        c.execute(text("UPDATE webhook_settings SET previous_secret = :p"), {"p": SecretBox(parse_keys(k1)).seal("x")})
    monkeypatch.setenv("LLMOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("LLMOS_SECRET_KEY", f"{k2},{k1}")
    monkeypatch.setenv("LLMOS_DATA_DIR", str(settings.data_dir))
    from click.testing import CliRunner

    from app.cli import main as llmos
    done = CliRunner().invoke(llmos, ["secrets", "reseal"])
    assert done.exit_code == 0 and "sealed" in done.output, done.output
    assert reseal(db=app2.extensions["llmos"].db, box=SecretBox(parse_keys(k2))) == 0  # k1 no longer needed

    # a key nobody kept: clear error, the delivery is recorded as not sent and retried, nothing crashes
    app3 = embedded(webhook_allow_private=True, secret_key=k3, database_url=settings.database_url,
                    webhook_retry_schedule_s="60")
    c3 = app3.test_client()
    r = c3.get("/webhooks/secret", headers=auth(key))
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "secret_key_mismatch", r.get_data()
    assert "LLMOS_SECRET_KEY" in r.get_json()["error"]["message"] and secret not in r.get_data(as_text=True)
    job = c3.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(key)).get_json()
    c3.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert sweep(app3) == 0
    [d] = deliveries(c3, key, job["id"])
    assert d["status"] == "pending" and "LLMOS_SECRET_KEY" in d["last_error"] and receiver.requests == []
    with pytest.raises(SecretKeyError):
        SecretBox(parse_keys(k3)).open(raw_secrets(app3)[0][1])


def test_embedded_default_generates_and_keeps_a_key(embedded: Callable[..., Any]) -> None:
    app = embedded()
    settings = app.extensions["llmos"].settings
    assert not settings.secret_key.get_secret_value()
    client, key = app.test_client(), make_key(app, "alice")
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    path = settings.data_dir / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(parse_keys(path.read_text())) == 1
    # a restart (a new process on the same data dir) opens what the first one sealed
    secrets_box._box.cache_clear()
    again = embedded(database_url=settings.database_url)
    assert again.test_client().get("/webhooks/secret", headers=auth(key)).get_json()["secret"] == secret


def test_settings_require_a_valid_key_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("LLMOS_")]:
        monkeypatch.delenv(var)
    pg = {"env": "production", "database_url": "postgresql://u:p@db/llmos"}
    with pytest.raises(ValidationError, match="LLMOS_SECRET_KEY"):
        load_settings(pg)
    with pytest.raises(ValidationError, match="LLMOS_SECRET_KEY: a secret key must be 32 bytes"):
        load_settings({**pg, "secret_key": "hunter2"})
    key = Fernet.generate_key().decode()
    settings = load_settings({**pg, "secret_key": key})
    assert key not in repr(settings) and key not in str(settings.model_dump())
    # `openssl rand -base64 32` (standard alphabet) works as well as a Fernet key; old keys after a comma
    std = "q+/3Qqz5lYcS6pKdBfuZNqSX2X+TtkfTQgNFDm/LJdU="
    box = box_for(load_settings({**pg, "secret_key": f"{std}, {key}"}))
    assert box.open(box.seal("whsec_x")).value == "whsec_x"
    with pytest.raises(SecretKeyError):
        SecretBox(parse_keys(key)).open(box.seal("whsec_y"))
    # development without a key is fine (the data dir's key file)
    assert load_settings({"env": "development"}).secret_key.get_secret_value() == ""


def test_box_marks_stale_values() -> None:
    k1, k2 = Fernet.generate_key(), Fernet.generate_key()
    old, new = SecretBox([k1]), SecretBox([k2, k1])
    assert new.open(old.seal("a")) == secrets_box.Opened("a", True)
    assert new.open(new.seal("a")) == secrets_box.Opened("a", False)
    assert new.open("whsec_plain") == secrets_box.Opened("whsec_plain", True)
    with pytest.raises(SecretKeyError):
        SecretBox([Fernet.generate_key()]).open(new.seal("a"))


def test_secrets_sealed_at_rest_on_postgresql(make_app: Callable[..., Any], pg: str, redis_url: str,
                                              receiver: Receiver) -> None:
    app = make_app(database_url=pg, broker_url=redis_url, webhook_allow_private=True)
    client, key = app.test_client(), make_key(app, "alice")
    old = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    new = client.post("/webhooks/secret/rotate", headers=auth(key)).get_json()["secret"]
    rows = raw_secrets(app)
    assert len(rows) == 1 and rows[0][2] is not None
    assert_sealed(rows, old, new)
    job = client.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(key)).get_json()
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert sweep(app) == 1
    [req] = receiver.ok()
    assert verified(new, req)["data"]["id"] == job["id"] and verified(old, req)["type"] == "job.cancelled"
