"""The HTTP API as a client sees it: status codes, JSON bodies and the rows behind them.

Real PostgreSQL and Redis (conftest fixtures); one test starts a real worker process.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from app.jobs import lifecycle
from app.models import Job, JobEvent, Outbox, Worker, utcnow
from app.services import workers as workers_service
from tests.conftest import auth, make_key, wait_status

JOB = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "hi"}}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def _fresh_broker_connections() -> None:
    """kombu keeps producer connections in process-wide pools, and each connection remembers the queue bindings
    it declared. The `redis_url` fixture flushes Redis before every test, so a connection pooled by an earlier
    test would publish into a binding that no longer exists and Redis would drop the message without a word.
    Start every test with fresh connections, as a fresh API process would."""
    import kombu.pools

    kombu.pools.reset()


def submit(client: Any, key: str, headers: dict[str, str] | None = None, **over: Any) -> dict[str, Any]:
    r = client.post("/jobs", json={**JOB, **over}, headers={**auth(key), **(headers or {})})
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def db(app: Any) -> Any:
    return app.extensions["llmos"].db


def job_count(app: Any) -> int:
    with db(app).session() as s:
        return s.scalar(select(func.count()).select_from(Job))


def assert_error(r: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message", "field"?}}, JSON, the right status, no traceback."""
    text = r.get_data(as_text=True)
    assert r.status_code == status, text
    assert r.mimetype == "application/json", text
    assert "Traceback" not in text
    body = r.get_json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) <= {"code", "message", "field"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err.get("field") == field, err
    return err


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# ---- bad input never makes a 500 ----------------------------------------------------------------------

BAD_POSTS = [
    # (name, request kwargs besides headers, extra headers, status, code, field)
    ("malformed JSON", {"data": '{"kind": "generate",'}, JSON, 400, "invalid_json", None),
    ("invalid UTF-8", {"data": b'{"kind": "\xff"}'}, JSON, 400, "invalid_json", None),
    ("JSON nested too deeply", {"data": "[" * 100_000}, JSON, 400, "invalid_json", None),
    ("text/plain body", {"data": json.dumps(JOB)}, {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type", None),
    ("form body", {"data": {"kind": "generate"}}, {}, 415, "unsupported_media_type", None),
    ("no body, no content type", {}, {}, 415, "unsupported_media_type", None),
    ("body is a list", {"json": [JOB]}, {}, 422, "invalid_input", None),
    ("body is null", {"data": "null"}, JSON, 422, "invalid_input", None),
    ("unknown model", {"json": {**JOB, "model": "no-such-model"}}, {}, 422, "model_not_found", "model"),
    ("NUL in model", {"json": {**JOB, "model": "tiny\x00"}}, {}, 422, "invalid_input", "model"),
    ("unknown kind", {"json": {**JOB, "kind": "telepathy"}}, {}, 422, "invalid_input", "kind"),
    ("missing kind", {"json": {"model": JOB["model"], "input": JOB["input"]}}, {}, 422, "invalid_input", "kind"),
    ("unknown top-level field", {"json": {**JOB, "colour": "red"}}, {}, 422, "invalid_input", "colour"),
    ("negative max_new_tokens", {"json": {**JOB, "params": {"max_new_tokens": -1}}}, {}, 422, "invalid_input",
     "params.max_new_tokens"),
    ("zero max_new_tokens", {"json": {**JOB, "params": {"max_new_tokens": 0}}}, {}, 422, "invalid_input",
     "params.max_new_tokens"),
    ("huge max_new_tokens", {"json": {**JOB, "params": {"max_new_tokens": 10**30}}}, {}, 422, "invalid_input",
     "params.max_new_tokens"),
    ("max_new_tokens over the limit", {"json": {**JOB, "params": {"max_new_tokens": 4097}}}, {}, 422,
     "invalid_input", "params.max_new_tokens"),
    ("max_new_tokens not a number", {"json": {**JOB, "params": {"max_new_tokens": "lots"}}}, {}, 422,
     "invalid_input", "params.max_new_tokens"),
    ("unknown param", {"json": {**JOB, "params": {"beam_width": 4}}}, {}, 422, "invalid_input",
     "params.beam_width"),
    ("temperature NaN", {"data": json.dumps({**JOB, "params": {"temperature": float("nan")}})}, JSON, 422,
     "invalid_input", "params.temperature"),
    ("prompt over the size limit", {"json": {**JOB, "input": {"prompt": "x" * 32_001}}}, {}, 413,
     "prompt_too_large", "input.prompt"),
    ("messages over the size limit",
     {"json": {**JOB, "input": {"messages": [{"role": "user", "content": "x" * 16_001}] * 2}}}, {}, 413,
     "prompt_too_large", "input.messages"),
    ("body over the request limit", {"json": {**JOB, "input": {"prompt": "x" * 1_100_000}}}, {}, 413,
     "payload_too_large", None),
    ("prompt and messages", {"json": {**JOB, "input": {"prompt": "a", "messages": [
        {"role": "user", "content": "b"}]}}}, {}, 422, "invalid_input", "input"),
    ("bad message role", {"json": {**JOB, "input": {"messages": [{"role": "god", "content": "b"}]}}}, {}, 422,
     "invalid_input", "input.messages.0.role"),
    ("input not an object", {"json": {**JOB, "input": "hi"}}, {}, 422, "invalid_input", "input"),
    ("unknown gpu type", {"json": {**JOB, "gpu": "tpu-v5"}}, {}, 422, "invalid_input", "gpu"),
    ("unknown gpu in list", {"json": {**JOB, "gpu": ["h100", "tpu-v5"]}}, {}, 422, "invalid_input", "gpu"),
    ("empty gpu list", {"json": {**JOB, "gpu": []}}, {}, 422, "invalid_input", "gpu"),
    ("gpu any with others", {"json": {**JOB, "gpu": ["any", "h100"]}}, {}, 422, "invalid_input", "gpu"),
    ("gpu not a string", {"json": {**JOB, "gpu": 100}}, {}, 422, "invalid_input", "gpu"),
    ("priority out of range", {"json": {**JOB, "priority": 10}}, {}, 422, "invalid_input", "priority"),
    ("timeout over the limit", {"json": {**JOB, "timeout_s": 10**9}}, {}, 422, "invalid_input", "timeout_s"),
    ("metadata value not a string", {"json": {**JOB, "metadata": {"team": 7}}}, {}, 422, "invalid_input",
     "metadata.team"),
    ("Idempotency-Key too long", {"json": JOB}, {"Idempotency-Key": "k" * 256}, 422, "invalid_input",
     "Idempotency-Key"),
]


@pytest.mark.parametrize(("kwargs", "headers", "status", "code", "field"),
                         [case[1:] for case in BAD_POSTS], ids=[case[0] for case in BAD_POSTS])
def test_bad_submission_is_a_json_4xx_and_stores_nothing(client, app, key, kwargs, headers, status, code, field):
    r = client.post("/jobs", headers={**auth(key), **headers}, **kwargs)
    assert_error(r, status, code, field)
    assert job_count(app) == 0


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "unauthorized"),
    ({"Authorization": "Bearer llmos_not-a-real-key"}, "invalid_api_key"),
    ({"Authorization": "Bearer "}, "unauthorized"),
    ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "unauthorized"),
], ids=["missing key", "wrong key", "empty bearer", "basic auth"])
@pytest.mark.parametrize(("method", "path"), [
    ("post", "/jobs"), ("get", "/jobs"), ("get", "/jobs/job_x"), ("post", "/jobs/job_x/cancel"),
    ("get", "/jobs/job_x/events"), ("get", "/models"), ("get", "/workers"),
])
def test_every_resource_needs_a_valid_key(client, app, key, headers, code, method, path):
    kwargs = {"json": JOB} if path == "/jobs" and method == "post" else {}
    r = getattr(client, method)(path, headers=headers, **kwargs)
    assert_error(r, 401, code)
    assert job_count(app) == 0


def test_revoked_key_is_refused_at_once_caches_included(client, app, key, make_app, pg, redis_url):
    """Keys are cached briefly; a revoke drops the cached copy in this process before it returns, and in every
    other process (here: a second app with its own cache) through the signals bus."""
    from app.models import ApiKey
    from app.services import auth as auth_service

    other = make_app(database_url=pg, broker_url=redis_url).test_client()
    assert client.get("/jobs", headers=auth(key)).status_code == 200
    assert other.get("/jobs", headers=auth(key)).status_code == 200  # both caches hold the key now
    with db(app).session() as s:
        for row in s.scalars(select(ApiKey)):
            assert auth_service.revoke_key(session=s, key_id=row.id)
    assert_error(client.get("/jobs", headers=auth(key)), 401, "invalid_api_key")
    deadline = time.monotonic() + 5
    while other.get("/jobs", headers=auth(key)).status_code != 401:
        assert time.monotonic() < deadline, "the other process still accepts the revoked key"
        time.sleep(0.01)


BAD_GETS = [
    ("/jobs?limit=0", 422, "invalid_input", "limit"),
    ("/jobs?limit=101", 422, "invalid_input", "limit"),
    ("/jobs?limit=ten", 422, "invalid_input", "limit"),
    ("/jobs?cursor=not-a-cursor", 422, "invalid_input", "cursor"),
    (f"/jobs?cursor={cursor_of(['2026-01-01T00:00:00+00:00', 5])}", 422, "invalid_input", "cursor"),
    (f"/jobs?cursor={cursor_of(['2026-01-01T00:00:00+00:00', None])}", 422, "invalid_input", "cursor"),
    (f"/jobs?cursor={cursor_of(['2026-01-01T00:00:00+00:00', {'id': 1}])}", 422, "invalid_input", "cursor"),
    (f"/jobs?cursor={cursor_of(['yesterday', 'job_x'])}", 422, "invalid_input", "cursor"),
    (f"/jobs?cursor={cursor_of({'a': 1})}", 422, "invalid_input", "cursor"),
    ("/jobs?status=exploded", 422, "invalid_input", "status"),
    ("/jobs?kind=gen%00erate", 400, "bad_request", None),
    ("/jobs?model=%00", 400, "bad_request", None),
    ("/jobs/job_%00x", 400, "bad_request", None),
    ("/jobs/job_%00x/events", 400, "bad_request", None),
    ("/jobs/job_does_not_exist", 404, "job_not_found", None),
    ("/jobs/" + "x" * 5000, 404, "job_not_found", None),
    ("/jobs/job_does_not_exist/events", 404, "job_not_found", None),
    ("/jobs/job_does_not_exist?wait=1", 404, "job_not_found", None),
    ("/jobs/job_x?wait=61", 422, "invalid_input", "wait"),
    ("/jobs/job_x?wait=abc", 422, "invalid_input", "wait"),
    ("/jobs/job_x?wait=-1", 422, "invalid_input", "wait"),
    ("/jobs/job_x?wait=nan", 422, "invalid_input", "wait"),
    ("/no/such/path", 404, "not_found", None),
]


@pytest.mark.parametrize(("path", "status", "code", "field"), BAD_GETS, ids=[c[0][:60] for c in BAD_GETS])
def test_bad_reads_are_json_4xx(client, key, path, status, code, field):
    assert_error(client.get(path, headers=auth(key)), status, code, field)


def test_bad_event_cursor_is_422(client, key):
    job = submit(client, key)
    r = client.get(f"/jobs/{job['id']}/events?cursor={cursor_of(['2026-01-01T00:00:00+00:00', 'evt_1'])}",
                   headers=auth(key))
    assert_error(r, 422, "invalid_input", "cursor")


def test_wrong_method_is_405_json(client, key):
    assert_error(client.delete("/jobs", headers=auth(key)), 405, "method_not_allowed")
    assert_error(client.get("/jobs/job_x/cancel", headers=auth(key)), 405, "method_not_allowed")


def test_cancel_of_a_finished_job_is_409(client, app, key):
    job = submit(client, key)
    with db(app).session() as s:
        s.get(Job, job["id"]).status = "succeeded"
    r = client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert_error(r, 409, "job_finished")
    assert client.get(f"/jobs/{job['id']}", headers=auth(key)).get_json()["status"] == "succeeded"


# ---- submission ---------------------------------------------------------------------------------------


def test_submit_stores_the_job_its_event_and_publishes_it(client, app, key):
    r = client.post("/jobs", json={**JOB, "params": {"max_new_tokens": 8}, "metadata": {"team": "nlp"}},
                    headers=auth(key))
    assert r.status_code == 202
    job = r.get_json()
    assert job["id"].startswith("job_")
    assert r.headers["Location"].endswith(f"/jobs/{job['id']}")
    assert "Idempotent-Replayed" not in r.headers
    assert job["status"] == "queued" and job["object"] == "job"
    assert job["kind"] == "generate" and job["model"] == "tiny-random-llama"
    assert job["params"]["max_new_tokens"] == 8
    assert job["gpu"] == ["any"] and job["queue"] == "generate.any"
    assert job["metadata"] == {"team": "nlp"}
    assert job["attempts"] == 0 and job["output"] is None and job["error"] is None
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    with db(app).session() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.status == "queued"
        assert len(s.scalars(select(Outbox).where(Outbox.job_id == job["id"])).all()) == 1
    platform = app.extensions["llmos"]
    assert platform.publisher.queue_depth("generate.any") == 1  # published right after commit
    platform.dispatcher.flush()  # the sent mark is written by the next flush (one UPDATE for many requests)
    with db(app).session() as s:
        assert s.scalars(select(Outbox.sent_at).where(Outbox.job_id == job["id"])).one() is not None
    assert client.get(f"/jobs/{job['id']}", headers=auth(key)).get_json() == job


def test_gpu_no_worker_ever_served_is_accepted_with_a_warning_event(client, key):
    job = submit(client, key, gpu=["h100", "a100-80gb"])
    assert job["gpu"] == ["h100", "a100-80gb"] and job["queue"] == "generate.h100"
    events = client.get(f"/jobs/{job['id']}/events", headers=auth(key)).get_json()["data"]
    warnings = [e for e in events if e["type"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["data"]["code"] == "no_worker_for_gpu"
    assert "h100" in warnings[0]["message"]


def test_gpu_routes_to_a_type_a_worker_serves(client, app, key):
    with db(app).session() as s:
        workers_service.heartbeat(session=s, worker_id="w-a100", host="h", pid=1, gpu_type="a100-80gb",
                                  queues=["generate.a100-80gb"])
    job = submit(client, key, gpu=["h100", "a100-80gb"])
    assert job["queue"] == "generate.a100-80gb"
    events = client.get(f"/jobs/{job['id']}/events", headers=auth(key)).get_json()["data"]
    assert [e["type"] for e in events] == ["queued"]


# ---- idempotency --------------------------------------------------------------------------------------


def test_idempotency_key_same_body_returns_the_same_job(client, app, key):
    h = {"Idempotency-Key": "order-42"}
    first = submit(client, key, headers=h)
    # the same body with its keys in another order is the same request
    body = {"input": JOB["input"], "model": JOB["model"], "kind": JOB["kind"]}
    r = client.post("/jobs", json=body, headers={**auth(key), **h})
    assert r.status_code == 202
    assert r.headers["Idempotent-Replayed"] == "true"
    assert r.get_json()["id"] == first["id"]
    assert job_count(app) == 1


def test_idempotency_key_with_another_body_is_409(client, app, key):
    h = {"Idempotency-Key": "order-43"}
    first = submit(client, key, headers=h)
    r = client.post("/jobs", json={**JOB, "input": {"prompt": "something else"}}, headers={**auth(key), **h})
    assert_error(r, 409, "idempotency_key_reused", "Idempotency-Key")
    assert job_count(app) == 1
    assert client.get(f"/jobs/{first['id']}", headers=auth(key)).get_json()["input"] == JOB["input"]


def test_idempotency_keys_belong_to_their_owner(client, app, key):
    bob = make_key(app, "bob")
    h = {"Idempotency-Key": "shared-key"}
    a = submit(client, key, headers=h)
    b = submit(client, bob, headers=h, input={"prompt": "bob's own"})
    assert a["id"] != b["id"]
    assert job_count(app) == 2


def test_without_idempotency_key_each_post_is_a_new_job(client, app, key):
    assert submit(client, key)["id"] != submit(client, key)["id"]
    assert job_count(app) == 2


# ---- owner isolation ----------------------------------------------------------------------------------


def test_a_key_sees_only_its_owners_jobs(client, app, key):
    bob = make_key(app, "bob")
    alice_job = submit(client, key)
    bob_job = submit(client, bob)
    jid = alice_job["id"]
    for r in (
        client.get(f"/jobs/{jid}", headers=auth(bob)),
        client.get(f"/jobs/{jid}?wait=0.2", headers=auth(bob)),
        client.post(f"/jobs/{jid}/cancel", headers=auth(bob)),
        client.get(f"/jobs/{jid}/events", headers=auth(bob)),
    ):
        err = assert_error(r, 404, "job_not_found")
        assert "alice" not in err["message"]
    assert [j["id"] for j in client.get("/jobs", headers=auth(bob)).get_json()["data"]] == [bob_job["id"]]
    assert [j["id"] for j in client.get("/jobs", headers=auth(key)).get_json()["data"]] == [jid]
    # bob's cancel did nothing to alice's job
    assert client.get(f"/jobs/{jid}", headers=auth(key)).get_json()["status"] == "queued"


def test_a_second_key_of_the_same_owner_sees_the_jobs(client, app, key):
    job = submit(client, key)
    other = make_key(app, "alice")
    assert client.get(f"/jobs/{job['id']}", headers=auth(other)).status_code == 200


# ---- cancel -------------------------------------------------------------------------------------------


def test_cancel_a_queued_job(client, app, key):
    job = submit(client, key)
    r = client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "cancelled"
    assert body["error"] == {"code": "cancelled", "message": "cancelled by the user before it ran"}
    assert body["finished_at"] and body["cancel_requested_at"] and body["started_at"] is None
    # cancelling again changes nothing and is not an error
    again = client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert again.status_code == 200 and again.get_json()["status"] == "cancelled"
    events = client.get(f"/jobs/{job['id']}/events", headers=auth(key)).get_json()["data"]
    assert [e["type"] for e in events] == ["queued", "cancelled"]
    with db(app).session() as s:
        assert s.get(Job, job["id"]).status == "cancelled"


def test_cancel_a_running_job_asks_it_to_stop(client, app, key):
    job = submit(client, key)
    with db(app).session() as s:
        assert lifecycle.claim(s, job_id=job["id"], worker_id="w-test") is not None
    r = client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert r.status_code == 200 and r.get_json()["status"] == "cancelling"
    events = client.get(f"/jobs/{job['id']}/events", headers=auth(key)).get_json()["data"]
    assert [e["type"] for e in events] == ["queued", "running", "cancelling"]


def broker_backlog(broker: Any) -> tuple[int, int]:
    """(messages waiting in the generate.* queues, messages delivered but not acknowledged) on Redis."""
    waiting = sum(broker.llen(k) for k in broker.keys("generate.*") if broker.type(k) == b"list")
    return waiting, broker.hlen("unacked")


def test_a_cancelled_queued_job_never_runs(client, app, key, pg, redis_url, start_worker):
    broker = redis.Redis.from_url(redis_url)
    cancelled = submit(client, key)
    assert client.post(f"/jobs/{cancelled['id']}/cancel", headers=auth(key)).get_json()["status"] == "cancelled"
    # its message is still on the broker: the worker will be handed it and must not run it
    assert broker_backlog(broker) == (1, 0)
    worker = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2")
    done = submit(client, key, params={"max_new_tokens": 4})
    finished = wait_status(client, key, done["id"], ("succeeded", "failed", "cancelled"), timeout=90)
    assert finished["status"] == "succeeded", (finished, worker.log()[-3000:])
    assert isinstance(finished["output"]["text"], str)

    after = client.get(f"/jobs/{cancelled['id']}", headers=auth(key)).get_json()
    assert after["status"] == "cancelled"
    assert after["attempts"] == 0 and after["worker_id"] is None and after["started_at"] is None
    assert after["output"] is None
    events = client.get(f"/jobs/{cancelled['id']}/events", headers=auth(key)).get_json()["data"]
    assert "running" not in [e["type"] for e in events]
    assert [e["type"] for e in events] == ["queued", "cancelled"]
    # both messages were taken off the broker and acknowledged: the cancelled one was delivered and skipped
    deadline = time.monotonic() + 10
    while broker_backlog(broker) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert broker_backlog(broker) == (0, 0), worker.log()[-3000:]
    broker.close()


# ---- long-poll ----------------------------------------------------------------------------------------


def test_long_poll_on_a_queued_job_returns_after_the_wait(client, key):
    job = submit(client, key)
    start = time.monotonic()
    r = client.get(f"/jobs/{job['id']}?wait=1", headers=auth(key))
    elapsed = time.monotonic() - start
    assert r.status_code == 200 and r.get_json()["status"] == "queued"
    assert 0.95 <= elapsed < 2.5, elapsed


def test_long_poll_on_a_finished_job_returns_at_once(client, key):
    job = submit(client, key)
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    start = time.monotonic()
    r = client.get(f"/jobs/{job['id']}?wait=60", headers=auth(key))
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert time.monotonic() - start < 1


def test_long_poll_accepts_the_maximum(client, key):
    job = submit(client, key)
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert client.get(f"/jobs/{job['id']}?wait=60", headers=auth(key)).status_code == 200
    assert client.get(f"/jobs/{job['id']}?wait=0", headers=auth(key)).status_code == 200


# ---- listing ------------------------------------------------------------------------------------------


def test_list_jobs_filters(client, key):
    tiny = [submit(client, key)["id"] for _ in range(3)]
    smol = [submit(client, key, model="smollm2-135m-instruct")["id"] for _ in range(2)]
    client.post(f"/jobs/{tiny[0]}/cancel", headers=auth(key))

    def ids(query: str) -> list[str]:
        r = client.get(f"/jobs{query}", headers=auth(key))
        assert r.status_code == 200, r.get_json()
        return [j["id"] for j in r.get_json()["data"]]

    assert ids("") == [*reversed(smol), *reversed(tiny)]
    assert ids("?status=cancelled") == [tiny[0]]
    assert ids("?status=queued") == [*reversed(smol), tiny[2], tiny[1]]
    assert ids("?status=running") == []
    assert ids("?model=smollm2-135m-instruct") == list(reversed(smol))
    assert ids("?model=tiny-random-llama&status=queued") == [tiny[2], tiny[1]]
    assert ids("?kind=generate") == [*reversed(smol), *reversed(tiny)]
    assert ids("?kind=finetune") == []


def test_list_jobs_cursor_pagination_newest_first(client, key):
    created = [submit(client, key, input={"prompt": f"p{i}"})["id"] for i in range(7)]
    r = client.get("/jobs?limit=3", headers=auth(key))
    body = r.get_json()
    assert set(body) == {"data", "next_cursor"}
    seen, pages = [], 0
    cursor = None
    while True:
        q = "/jobs?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(q, headers=auth(key)).get_json()
        assert len(body["data"]) <= 3
        seen += [j["id"] for j in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(created))
    # the default page holds all 7, with no next page
    body = client.get("/jobs", headers=auth(key)).get_json()
    assert len(body["data"]) == 7 and body["next_cursor"] is None
    # an exact fit gives no next_cursor either
    assert client.get("/jobs?limit=7", headers=auth(key)).get_json()["next_cursor"] is None
    assert client.get("/jobs?limit=100", headers=auth(key)).status_code == 200


def test_cursor_with_filters(client, key):
    created = [submit(client, key)["id"] for _ in range(3)]
    submit(client, key, model="smollm2-135m-instruct")
    first = client.get("/jobs?model=tiny-random-llama&limit=2", headers=auth(key)).get_json()
    assert [j["id"] for j in first["data"]] == [created[2], created[1]]
    rest = client.get(f"/jobs?model=tiny-random-llama&limit=2&cursor={first['next_cursor']}",
                      headers=auth(key)).get_json()
    assert [j["id"] for j in rest["data"]] == [created[0]] and rest["next_cursor"] is None


# ---- events -------------------------------------------------------------------------------------------


def test_job_events(client, app, key):
    job = submit(client, key)
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    r = client.get(f"/jobs/{job['id']}/events", headers=auth(key))
    assert r.status_code == 200
    body = r.get_json()
    assert body["next_cursor"] is None
    queued, cancelled = body["data"]
    assert queued["type"] == "queued" and cancelled["type"] == "cancelled"
    for ev in body["data"]:
        assert set(ev) >= {"id", "type", "created_at", "message", "data"}
        assert ev["id"].startswith("evt_") and ev["created_at"].endswith("Z")
        assert ev["job_id"] == job["id"]
    assert queued["data"] == {"queue": "generate.any", "priority": 5}
    assert "generate.any" in queued["message"]

    page1 = client.get(f"/jobs/{job['id']}/events?limit=1", headers=auth(key)).get_json()
    assert [e["type"] for e in page1["data"]] == ["queued"] and page1["next_cursor"]
    page2 = client.get(f"/jobs/{job['id']}/events?limit=1&cursor={page1['next_cursor']}",
                       headers=auth(key)).get_json()
    assert [e["type"] for e in page2["data"]] == ["cancelled"] and page2["next_cursor"] is None
    with db(app).session() as s:
        assert s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job["id"])) == 2


# ---- models, workers, health --------------------------------------------------------------------------


def test_models_lists_the_seeded_models(client, key):
    r = client.get("/models", headers=auth(key))
    assert r.status_code == 200
    body = r.get_json()
    assert body["next_cursor"] is None
    by_id = {m["id"]: m for m in body["data"]}
    assert {"smollm2-135m-instruct", "tiny-random-llama"} <= set(by_id)
    assert by_id["smollm2-135m-instruct"]["kind"] == "causal-lm"
    assert by_id["smollm2-135m-instruct"]["source_type"] == "package"
    assert by_id["tiny-random-llama"]["source_type"] == "random"
    assert all(m["object"] == "model" for m in body["data"])


def test_workers_lists_heartbeats_and_liveness(client, app, key, admin_key):
    assert client.get("/workers", headers=auth(admin_key)).get_json() == {"data": [], "next_cursor": None}
    from datetime import timedelta

    with db(app).session() as s:
        workers_service.heartbeat(session=s, worker_id="w-live", host="gpu-1", pid=10, gpu_type="h100",
                                  gpu_name="NVIDIA H100", queues=["generate.h100", "generate.any"],
                                  models_loaded=["tiny-random-llama"])
        workers_service.heartbeat(session=s, worker_id="w-dead", host="gpu-2", pid=11, gpu_type="cpu")
        s.get(Worker, "w-dead").last_heartbeat_at = utcnow() - timedelta(minutes=5)
    body = client.get("/workers", headers=auth(admin_key)).get_json()
    by_id = {w["id"]: w for w in body["data"]}
    assert set(by_id) == {"w-live", "w-dead"}
    live = by_id["w-live"]
    assert live["alive"] is True and live["gpu_type"] == "h100" and live["host"] == "gpu-1"
    assert live["queues"] == ["generate.h100", "generate.any"]
    assert live["models_loaded"] == ["tiny-random-llama"]
    assert by_id["w-dead"]["alive"] is False
    # another key sees capacity by GPU type, never hosts, pids or loaded models
    pools = client.get("/workers", headers=auth(key)).get_json()["data"]
    assert pools == [{"object": "gpu_pool", "gpu_type": "cpu", "alive": 0, "total": 1, "running_jobs": 0},
                     {"object": "gpu_pool", "gpu_type": "h100", "alive": 1, "total": 1, "running_jobs": 0}]


def test_healthz_needs_no_key(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok", "database": "ok"}
