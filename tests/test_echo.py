"""The `echo` kind end to end (no model, no torch in the job): on PostgreSQL + Redis with a worker and a scheduler
process, and on the embedded default (`llmos dev`). It exercises the control plane alone: submit, claim,
outcome, long-poll wake-ups, cancels heard through the signals bus, time limits, the scheduler's leader lock."""

from __future__ import annotations

import signal
import time

import requests

from tests import test_integration
from tests.conftest import auth, wait_status

embedded = test_integration.embedded  # the `llmos dev` fixture

NO_POLL = {"LLMOS_CANCEL_POLL_INTERVAL_S": "60"}  # a cancel must arrive through the signals, not the slow poll


def echo(payload: dict, **over) -> dict:
    return {"kind": "echo", "input": payload, **over}


def test_echo_validation(client, key):
    ok = client.post("/jobs", json=echo({"a": [1, None, "x"], "b": {"c": True}}), headers=auth(key))
    assert ok.status_code == 202, ok.get_json()
    job = ok.get_json()
    assert job["model"] is None and job["queue"] == "echo.any" and job["params"] == {"sleep_s": 0.0}
    cases = [
        (echo({"a": 1}, model="tiny-random-llama"), "model"),
        (echo({"a": 1}, params={"sleep_s": 61}), "params.sleep_s"),
        (echo({"a": 1}, params={"nap": 1}), "params.nap"),
        (echo([1, 2]), "input"),
        ({"kind": "generate", "input": {"prompt": "hi"}}, "model"),
        ({"kind": "batch", "input": {"seq": 0}}, "kind"),  # chunks are made by POST /batches only
    ]
    for body, field in cases:
        r = client.post("/jobs", json=body, headers=auth(key))
        assert r.status_code == 422 and r.get_json()["error"]["field"] == field, (body, r.get_json())


def test_echo_on_postgres_and_redis(client, key, pg, redis_url, start_worker):
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4", **NO_POLL)
    payload = {"a": [1, None, "x"], "nested": {"deep": [{"k": "v"}]}, "unicode": "naïve ☃"}
    t0 = time.monotonic()
    job = client.post("/jobs", json=echo(payload), headers=auth(key)).get_json()
    body = client.get(f"/jobs/{job['id']}?wait=30", headers=auth(key)).get_json()
    assert body["status"] == "succeeded" and body["output"] == payload, body
    assert time.monotonic() - t0 < 10
    events = client.get(f"/jobs/{job['id']}/events", headers=auth(key)).get_json()["data"]
    assert [e["type"] for e in events] == ["queued", "running", "succeeded"]

    # the long-poll returns when the job ends, not at the end of its wait
    job = client.post("/jobs", json=echo({"n": 1}, params={"sleep_s": 1.0}), headers=auth(key)).get_json()
    t0 = time.monotonic()
    body = client.get(f"/jobs/{job['id']}?wait=30", headers=auth(key)).get_json()
    assert body["status"] == "succeeded" and 0.9 < time.monotonic() - t0 < 5, body

    # a cancel reaches the running worker through the signals (its database poll is set to a minute)
    job = client.post("/jobs", json=echo({"n": 2}, params={"sleep_s": 30}), headers=auth(key)).get_json()
    wait_status(client, key, job["id"], ("running",))
    t0 = time.monotonic()
    assert client.post(f"/jobs/{job['id']}/cancel", headers=auth(key)).status_code == 200
    body = client.get(f"/jobs/{job['id']}?wait=10", headers=auth(key)).get_json()
    assert body["status"] == "cancelled" and body["error"]["code"] == "cancelled", body
    assert time.monotonic() - t0 < 2

    # the time limit is enforced while it waits
    job = client.post("/jobs", json=echo({"n": 3}, params={"sleep_s": 20}, timeout_s=1), headers=auth(key)).get_json()
    body = client.get(f"/jobs/{job['id']}?wait=15", headers=auth(key)).get_json()
    assert body["status"] == "failed" and body["error"]["code"] == "timeout", body


def test_two_schedulers_one_active_and_the_other_takes_over(make_app, pg, redis_url, start_scheduler):
    a = start_scheduler(pg, redis_url)
    b = start_scheduler(pg, redis_url)

    def active(proc) -> bool:
        return "scheduler active" in proc.log()

    deadline = time.monotonic() + 30
    while not (active(a) or active(b)):
        assert time.monotonic() < deadline, a.log()[-2000:] + b.log()[-2000:]
        time.sleep(0.1)
    first, second = (a, b) if active(a) else (b, a)
    time.sleep(3)  # a few of the standby's tries at the lock
    assert not active(second), "two schedulers active at once"
    first.stop(signal.SIGKILL)  # its connection closes, and PostgreSQL releases the advisory lock
    deadline = time.monotonic() + 30
    while not active(second):
        assert time.monotonic() < deadline, second.log()[-2000:]
        time.sleep(0.1)


def test_echo_on_the_embedded_default(embedded):
    base, key, _data = embedded
    h = auth(key)
    job = requests.post(f"{base}/jobs", json=echo({"hello": "world"}), headers=h, timeout=10).json()
    body = requests.get(f"{base}/jobs/{job['id']}?wait=30", headers=h, timeout=40).json()
    assert body["status"] == "succeeded" and body["output"] == {"hello": "world"}, body
    job = requests.post(f"{base}/jobs", json=echo({}, params={"sleep_s": 30}), headers=h, timeout=10).json()
    deadline = time.monotonic() + 30
    while requests.get(f"{base}/jobs/{job['id']}", headers=h, timeout=10).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    requests.post(f"{base}/jobs/{job['id']}/cancel", headers=h, timeout=10)
    body = requests.get(f"{base}/jobs/{job['id']}?wait=10", headers=h, timeout=20).json()
    assert body["status"] == "cancelled", body
    assert time.monotonic() - t0 < 1.5  # heard through the Unix-socket signals, not the 2 s fallback poll


def test_kinds_are_read_from_the_registry(client, key):
    """GET /kinds and `llmos kinds` list what POST /jobs accepts, with the schemas it validates against."""
    from click.testing import CliRunner

    from app.cli import main

    body = client.get("/kinds", headers=auth(key)).get_json()
    by_name = {k["id"]: k for k in body["data"]}
    # `batch` chunks are internal; installed plugins (tests/test_plugins.py) may add more
    assert {"generate", "embed", "finetune", "echo", "classify", "ner"} <= set(by_name) and "batch" not in by_name
    assert by_name["echo"]["model_kind"] is None and by_name["generate"]["model_kind"] == "causal-lm"
    assert by_name["echo"]["schemas"]["params"]["properties"]["sleep_s"]["maximum"] == 60
    assert "max_new_tokens" in by_name["generate"]["schemas"]["params"]["properties"]
    assert by_name["finetune"]["resumable"] is True
    out = CliRunner().invoke(main, ["kinds"])
    assert out.exit_code == 0 and "echo" in out.output and "batch" not in out.output
