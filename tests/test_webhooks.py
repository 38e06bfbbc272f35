"""Webhooks end to end: a real HTTP receiver on loopback checks every delivery with the `standardwebhooks`
package; deliveries are sent by real worker processes on PostgreSQL + Redis."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app import webhooks as signing
from tests.conftest import auth, free_port, make_key, wait_status

WEBHOOK_ENV = {"LLMOS_WEBHOOK_ALLOW_PRIVATE": "1", "LLMOS_WEBHOOK_SWEEP_INTERVAL_S": "0.2",
               "LLMOS_WEBHOOK_RETRY_SCHEDULE_S": "0.3,0.5,1,1,1,1,1,1,1,1"}


def job_body(**over: Any) -> dict[str, Any]:
    body = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "Hello"},
            "params": {"max_new_tokens": 6, "min_new_tokens": 6, "temperature": 0}}
    body.update(over)
    return body


class Receiver:
    """An HTTP server on loopback recording every POST; `script` holds the answers of the next requests
    (status, headers), after which it answers 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "status": status,
                                              "at": time.monotonic()})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ok(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if 200 <= r["status"] < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def verified(secret: str, request: dict[str, Any]) -> dict[str, Any]:
    return Webhook(secret).verify(request["body"], request["headers"])


def deliveries(client: Any, key: str, job_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/jobs/{job_id}/webhook-deliveries", headers=auth(key))
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]


def all_done(client: Any, key: str, job_id: str, n: int) -> Callable[[], list[dict[str, Any]] | None]:
    def check() -> list[dict[str, Any]] | None:
        rows = deliveries(client, key, job_id)
        return rows if len(rows) == n and all(d["status"] != "pending" for d in rows) else None

    return check


@pytest.fixture
def env(make_app, pg, own_redis):
    app = make_app(database_url=pg, broker_url=own_redis.url, webhook_allow_private=True)
    return app, app.test_client(), make_key(app, "alice")


@pytest.fixture
def strict(make_app, pg, own_redis):
    """Private addresses not allowed (the default)."""
    app = make_app(database_url=pg, broker_url=own_redis.url)
    return app.test_client(), make_key(app, "alice")


# ---- signing -------------------------------------------------------------------------------------------


def test_signatures_are_standard_webhooks():
    secret = signing.new_secret()
    body = json.dumps({"type": "job.succeeded", "data": {"id": "job_1"}}).encode()
    headers = signing.headers([secret], "msg_1", body)
    assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded", "data": {"id": "job_1"}}
    assert signing.verify(secret, headers, body)["data"]["id"] == "job_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"job_1", b"job_2"), headers)
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(secret, headers, body.replace(b"job_1", b"job_2"))
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(secret, {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}, body)

    # and the other way round: what the package signs, our helper verifies
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    theirs = {"webhook-id": "msg_2", "webhook-timestamp": str(int(now.timestamp())),
              "webhook-signature": Webhook(secret).sign("msg_2", now, body.decode())}
    assert signing.verify(secret, theirs, body)["type"] == "job.succeeded"

    old, new = signing.new_secret(), signing.new_secret()
    both = signing.headers([new, old], "msg_3", body)
    assert len(both["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, both) and Webhook(new).verify(body, both)


# ---- the API -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/",
    "http://localhost:8080/hook", "ftp://example.com/hook", "http://[::1]/hook", "http://192.168.1.10/",
    "http://0.0.0.0/", "not a url",
])
def test_private_and_non_http_urls_refused(strict, url):
    client, key = strict
    r = client.post("/jobs", json=job_body(webhook=url), headers=auth(key))
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["field"] == "webhook"
    r = client.put("/webhooks/default", json={"url": url}, headers=auth(key))
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "url"


def test_bad_webhook_fields(strict):
    client, key = strict
    r = client.post("/jobs", json=job_body(webhook="http://127.0.0.1/", webhook_events=["finished"]),
                    headers=auth(key))
    assert r.status_code == 422 and r.get_json()["error"]["field"].startswith("webhook_events")
    r = client.post("/jobs", json=job_body(webhook_events=["started"]), headers=auth(key))
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "webhook_events"


def test_loopback_allowed_when_configured(env):
    app, client, key = env
    r = client.post("/jobs", json=job_body(webhook="http://localhost:9/hook"), headers=auth(key))
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["webhook"] == "http://localhost:9/hook"
    assert r.get_json()["webhook_events"] == ["completed"]
    r = client.post("/jobs", json=job_body(webhook="ftp://localhost/hook"), headers=auth(key))
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "webhook"


def test_cancel_writes_a_delivery_and_deliveries_are_owner_scoped(env):
    app, client, key = env
    other = make_key(app, "bob")
    job = client.post("/jobs", json=job_body(webhook="http://127.0.0.1:9/hook", webhook_events=["started"]),
                      headers=auth(key)).get_json()
    assert deliveries(client, key, job["id"]) == []
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert deliveries(client, key, job["id"]) == []  # filter: started only

    job = client.post("/jobs", json=job_body(webhook="http://127.0.0.1:9/hook"), headers=auth(key)).get_json()
    assert client.post(f"/jobs/{job['id']}/cancel", headers=auth(key)).status_code == 200
    [d] = deliveries(client, key, job["id"])
    assert d["id"].startswith("whd_") and d["webhook_id"].startswith("msg_")
    assert d["type"] == "job.cancelled" and d["status"] == "pending" and d["url"] == "http://127.0.0.1:9/hook"
    assert d["payload"]["type"] == "job.cancelled" and d["payload"]["data"]["status"] == "cancelled"
    assert d["payload"]["data"]["id"] == job["id"] and d["payload"]["timestamp"].endswith("Z")

    assert client.get(f"/jobs/{job['id']}/webhook-deliveries", headers=auth(other)).status_code == 404
    assert client.post(f"/webhook-deliveries/{d['id']}/redeliver", headers=auth(other)).status_code == 404
    assert client.post("/webhook-deliveries/whd_nope/redeliver", headers=auth(key)).status_code == 404
    r = client.post(f"/webhook-deliveries/{d['id']}/redeliver", headers=auth(key))
    assert r.status_code == 202 and r.get_json()["webhook_id"] == d["webhook_id"]


def test_default_webhook_and_secret(env):
    app, client, key = env
    assert client.get("/webhooks/default", headers=auth(key)).get_json() == {"url": None, "events": ["completed"]}
    r = client.put("/webhooks/default", json={"url": "http://127.0.0.1:9/d", "events": ["started", "completed"]},
                   headers=auth(key))
    assert r.status_code == 200, r.get_json()
    assert client.get("/webhooks/default", headers=auth(key)).get_json() == {
        "url": "http://127.0.0.1:9/d", "events": ["started", "completed"]}
    job = client.post("/jobs", json=job_body(), headers=auth(key)).get_json()
    assert job["webhook"] == "http://127.0.0.1:9/d" and job["webhook_events"] == ["started", "completed"]
    own = client.post("/jobs", json=job_body(webhook="http://127.0.0.1:9/own"), headers=auth(key)).get_json()
    assert own["webhook"] == "http://127.0.0.1:9/own" and own["webhook_events"] == ["completed"]

    s1 = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    assert s1.startswith("whsec_") and client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"] == s1
    other = client.get("/webhooks/secret", headers=auth(make_key(app, "bob"))).get_json()["secret"]
    assert other != s1
    rotated = client.post("/webhooks/secret/rotate", headers=auth(key)).get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != s1
    assert rotated["previous_secret_expires_at"]
    assert client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"] == rotated["secret"]


# ---- through a real worker -----------------------------------------------------------------------------


def test_events_delivered_signed_filtered_and_in_order(env, pg, own_redis, start_worker, receiver):
    app, client, key = env
    receiver.start()
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    client.put("/webhooks/default", json={"url": receiver.url}, headers=auth(key))
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **WEBHOOK_ENV)
    both = client.post("/jobs", json=job_body(webhook=receiver.url, webhook_events=["started", "completed"]),
                       headers=auth(key)).get_json()
    default = client.post("/jobs", json=job_body(), headers=auth(key)).get_json()
    started_only = client.post("/jobs", json=job_body(webhook=receiver.url, webhook_events=["started"]),
                               headers=auth(key)).get_json()
    for job in (both, default, started_only):
        wait_status(client, key, job["id"], ("succeeded",), timeout=120)
    wait_for("deliveries", lambda: all_done(client, key, both["id"], 2)() and all_done(client, key, default["id"], 1)()
             and all_done(client, key, started_only["id"], 1)())

    events = [verified(secret, r) for r in receiver.ok()]
    by_job: dict[str, list[str]] = {}
    for e in events:
        by_job.setdefault(e["data"]["id"], []).append(e["type"])
    assert by_job == {both["id"]: ["job.started", "job.succeeded"], default["id"]: ["job.succeeded"],
                      started_only["id"]: ["job.started"]}
    done = next(e for e in events if e["data"]["id"] == both["id"] and e["type"] == "job.succeeded")
    assert done["data"]["status"] == "succeeded" and done["data"]["usage"]["completion_tokens"] == 6
    assert len({r["headers"]["webhook-id"] for r in receiver.ok()}) == 4

    rows = deliveries(client, key, both["id"])
    assert [d["type"] for d in rows] == ["job.started", "job.succeeded"]
    for d in rows:
        assert d["status"] == "delivered" and d["attempts"] == 1 and d["last_status_code"] == 200
        assert len(d["attempt_log"]) == 1 and d["attempt_log"][0]["status_code"] == 200
        assert d["attempt_log"][0]["latency_ms"] >= 0 and d["attempt_log"][0]["error"] is None

    # a redelivery comes again with the same webhook-id
    n = len(receiver.ok())
    assert client.post(f"/webhook-deliveries/{rows[1]['id']}/redeliver", headers=auth(key)).status_code == 202
    wait_for("redelivery", lambda: len(receiver.ok()) > n)
    again = receiver.ok()[-1]
    assert again["headers"]["webhook-id"] == rows[1]["webhook_id"]
    assert verified(secret, again)["type"] == "job.succeeded"
    wait_for("redelivery recorded", lambda: len(deliveries(client, key, both["id"])[1]["attempt_log"]) == 2)


def test_receiver_down_then_failing_then_up(env, pg, own_redis, start_worker, receiver):
    app, client, key = env
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    patient = {**WEBHOOK_ENV, "LLMOS_WEBHOOK_RETRY_SCHEDULE_S": ",".join(["0.3", "0.5"] + ["1"] * 60)}
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **patient)
    job = client.post("/jobs", json=job_body(webhook=receiver.url, webhook_events=["started", "completed"]),
                      headers=auth(key)).get_json()
    wait_status(client, key, job["id"], ("succeeded",), timeout=120)
    # nothing listens: connection refused, and the job's completed waits behind its started
    n = deliveries(client, key, job["id"])[0]["attempts"]
    wait_for("two more refused attempts", lambda: deliveries(client, key, job["id"])[0]["attempts"] >= n + 2)
    rows = deliveries(client, key, job["id"])
    assert [d["status"] for d in rows] == ["pending", "pending"] and rows[1]["attempts"] == 0
    receiver.script = [(500, {}), (500, {})]
    receiver.start()
    rows = wait_for("both delivered", all_done(client, key, job["id"], 2), timeout=30)
    assert [d["status"] for d in rows] == ["delivered", "delivered"], rows

    started_log = rows[0]["attempt_log"]
    assert started_log[0]["status_code"] is None and "refused" in started_log[0]["error"].lower()
    assert [a["status_code"] for a in started_log[-3:]] == [500, 500, 200], started_log
    assert started_log[-2]["error"] == "HTTP 500"
    assert rows[0]["attempts"] == len(started_log)

    # every request of one event carries that event's id; each event acknowledged once
    ids_by_type: dict[str, set[str]] = {}
    for r in receiver.requests:
        ids_by_type.setdefault(verified(secret, r)["type"], set()).add(r["headers"]["webhook-id"])
    assert ids_by_type == {"job.started": {rows[0]["webhook_id"]}, "job.succeeded": {rows[1]["webhook_id"]}}
    assert [verified(secret, r)["type"] for r in receiver.ok()] == ["job.started", "job.succeeded"]


def test_gone_and_retry_after(env, pg, own_redis, start_worker, receiver):
    app, client, key = env
    receiver.script = [(503, {"Retry-After": "2"}), (410, {})]
    receiver.start()
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **WEBHOOK_ENV)
    job = client.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(key)).get_json()
    wait_status(client, key, job["id"], ("succeeded",), timeout=120)
    [d] = wait_for("given up", all_done(client, key, job["id"], 1), timeout=30)
    assert d["status"] == "failed" and d["last_status_code"] == 410 and d["attempts"] == 2
    first, second = receiver.requests
    assert second["at"] - first["at"] >= 1.9  # Retry-After: 2 beats the 0.3 s schedule
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    events = client.get(f"/jobs/{job['id']}/events", headers=auth(key)).get_json()["data"]
    failed = [e for e in events if e["type"] == "webhook_failed"]
    assert len(failed) == 1 and failed[0]["data"]["delivery_id"] == d["id"]
    time.sleep(1.5)
    assert len(receiver.requests) == 2  # no retry after 410


def test_rotation_both_secrets_verify(env, pg, own_redis, start_worker, receiver):
    app, client, key = env
    receiver.start()
    old = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    new = client.post("/webhooks/secret/rotate", headers=auth(key)).get_json()["secret"]
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **WEBHOOK_ENV)
    job = client.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(key)).get_json()
    wait_status(client, key, job["id"], ("succeeded",), timeout=120)
    wait_for("delivered", lambda: receiver.ok())
    [req] = receiver.ok()
    assert len(req["headers"]["webhook-signature"].split(" ")) == 2
    assert verified(old, req)["data"]["id"] == job["id"]
    assert verified(new, req)["data"]["id"] == job["id"]
    assert signing.verify(new, req["headers"], req["body"])["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        verified(signing.new_secret(), req)


def test_worker_restart_before_delivery_still_delivers(env, pg, own_redis, start_worker, receiver):
    app, client, key = env
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    slow = {**WEBHOOK_ENV, "LLMOS_WEBHOOK_RETRY_SCHEDULE_S": ",".join(["1"] + ["2"] * 40)}
    first = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **slow)
    job = client.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(key)).get_json()
    wait_status(client, key, job["id"], ("succeeded",), timeout=120)
    wait_for("a failed attempt", lambda: deliveries(client, key, job["id"])[0]["attempts"] >= 1)
    first.stop(signal.SIGTERM)
    assert first.proc.returncode is not None
    assert deliveries(client, key, job["id"])[0]["status"] == "pending"
    receiver.start()
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **slow)
    [d] = wait_for("delivered", all_done(client, key, job["id"], 1), timeout=60)
    assert d["status"] == "delivered"
    [req] = receiver.requests
    assert verified(secret, req)["data"]["id"] == job["id"] and req["headers"]["webhook-id"] == d["webhook_id"]


def test_sweep_on_sqlite_embedded_default(make_app, receiver):
    """The embedded default (SQLite, no FOR UPDATE): the sweep claims, signs, sends and records."""
    from concurrent.futures import ThreadPoolExecutor

    from app.services import registry, webhooks
    from migrations import upgrade

    app = make_app(webhook_allow_private=True, webhook_retry_schedule_s="0.5")
    p = app.extensions["llmos"]
    upgrade(p.settings.database_url)
    with p.db.session() as s:
        registry.seed_registry(session=s)
    client, key = app.test_client(), make_key(app, "alice")
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    jobs = [client.post("/jobs", json=job_body(webhook=receiver.url), headers=auth(key)).get_json() for _ in range(2)]
    for job in jobs:
        assert client.post(f"/jobs/{job['id']}/cancel", headers=auth(key)).get_json()["status"] == "cancelled"
    with ThreadPoolExecutor(2) as pool:
        assert webhooks.sweep(db=p.db, settings=p.settings, pool=pool) == 0  # receiver down: refused
        [d] = deliveries(client, key, jobs[0]["id"])
        assert d["status"] == "pending" and d["attempts"] == 1 and "refused" in d["last_error"].lower()
        receiver.start()
        assert webhooks.sweep(db=p.db, settings=p.settings, pool=pool) == 0  # not due yet
        time.sleep(0.7)
        assert webhooks.sweep(db=p.db, settings=p.settings, pool=pool) == 2
        assert webhooks.sweep(db=p.db, settings=p.settings, pool=pool) == 0  # nothing left
    got = sorted(verified(secret, r)["data"]["id"] for r in receiver.ok())
    assert got == sorted(j["id"] for j in jobs)
    assert all(verified(secret, r)["type"] == "job.cancelled" for r in receiver.ok())


def test_progress_events_and_webhooks(env, pg, own_redis, start_worker, receiver):
    app, client, key = env
    receiver.start()
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", LLMOS_PROGRESS_INTERVAL_S="0.3",
                 **WEBHOOK_ENV)
    body = job_body(webhook=receiver.url, webhook_events=["progress", "completed"],
                    params={"max_new_tokens": 2500, "min_new_tokens": 2500, "temperature": 0})
    job = client.post("/jobs", json=body, headers=auth(key)).get_json()
    running = wait_for("progress on the job", lambda: (lambda b: b if b["progress"] else None)(
        client.get(f"/jobs/{job['id']}", headers=auth(key)).get_json()))
    assert 0 < running["progress"]["done"] <= 2500 and running["progress"]["total"] == 2500
    wait_status(client, key, job["id"], ("succeeded",), timeout=120)
    wait_for("completed delivery", lambda: any(verified(secret, r)["type"] == "job.succeeded" for r in receiver.ok()))
    types = [verified(secret, r)["type"] for r in receiver.ok()]
    assert types[-1] == "job.succeeded" and types.count("job.succeeded") == 1
    progress = [verified(secret, r)["data"]["progress"]["done"] for r in receiver.ok()
                if verified(secret, r)["type"] == "job.progress"]
    assert progress and progress == sorted(progress) and all(0 < d <= 2500 for d in progress)
    events = client.get(f"/jobs/{job['id']}/events?limit=100", headers=auth(key)).get_json()["data"]
    assert any(e["type"] == "progress" and e["data"]["total"] == 2500 for e in events)


def test_batch_webhook_on_completion(env, pg, own_redis, start_worker, receiver):
    app, client, key = env
    receiver.start()
    secret = client.get("/webhooks/secret", headers=auth(key)).get_json()["secret"]
    bad = client.post("/batches", json={"documents": [{"custom_id": "a", "text": "x"}], "model": "tiny-random-llama",
                                        "task": {"type": "generate", "template": "{text}"},
                                        "webhook": "ftp://example.com/hook"}, headers=auth(key))
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "webhook"
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **WEBHOOK_ENV)
    docs = [{"custom_id": f"d{i}", "text": f"document {i}"} for i in range(20)]
    r = client.post("/batches", json={"documents": docs, "model": "tiny-random-llama", "webhook": receiver.url,
                                      "task": {"type": "generate", "template": "Summarize: {text}"},
                                      "params": {"max_new_tokens": 4}}, headers=auth(key))
    assert r.status_code == 202, r.get_json()
    batch = r.get_json()
    assert batch["webhook"] == receiver.url
    wait_for("batch webhook", lambda: [x for x in receiver.ok() if verified(secret, x)["type"].startswith("batch.")])
    events = [verified(secret, x) for x in receiver.ok() if verified(secret, x)["type"].startswith("batch.")]
    assert len(events) == 1 and events[0]["type"] == "batch.succeeded"
    data = events[0]["data"]
    assert data["id"] == batch["id"] and data["status"] == "succeeded"
    assert data["request_counts"] == {"total": 20, "completed": 20, "failed": 0} and data["output_file_id"]
