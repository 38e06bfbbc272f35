"""Fault injection with real processes: a killed worker, a broker that is down or restarted, a message
delivered twice, a job over its time limit, a running job cancelled. Each test runs its own Redis."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import func, select

from app.models import JobEvent
from tests.conftest import auth, make_key, wait_status

FAST = {"LLMOS_WORKER_LOST_AFTER_S": "3", "LLMOS_RECONCILE_INTERVAL_S": "0.5", "LLMOS_REPUBLISH_AFTER_S": "3"}


def long_job(tokens: int = 3000, **over):
    body = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "Go on and on"},
            "params": {"max_new_tokens": tokens, "min_new_tokens": tokens, "temperature": 0}}
    body.update(over)
    return body


def short_job():
    return long_job(6)


@pytest.fixture
def env(make_app, pg, own_redis):
    app = make_app(database_url=pg, broker_url=own_redis.url, worker_lost_after_s=3)
    return app, app.test_client(), make_key(app, "alice")


def event_types(client, key, job_id):
    return [e["type"] for e in (client.get(f"/jobs/{job_id}/events?limit=100", headers=auth(key))
                                        .get_json()["data"])]


def count_events(app, job_id, type_):
    with app.extensions["llmos"].db.session() as s:
        return s.scalar(select(func.count()).where(JobEvent.job_id == job_id, JobEvent.type == type_))


def test_killed_worker_job_finishes_on_another(env, pg, own_redis, start_worker):
    app, client, key = env
    a = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **FAST)
    job = client.post("/jobs", json=long_job(), headers=auth(key)).get_json()
    running = wait_status(client, key, job["id"], ("running",))
    assert running["worker_id"].endswith(f"-{a.proc.pid}@" + running["worker_id"].split("@")[1])
    time.sleep(0.5)
    a.stop(signal.SIGKILL)
    b = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **FAST)
    done = wait_status(client, key, job["id"], ("succeeded", "failed"), timeout=120)
    assert done["status"] == "succeeded", (done, b.log()[-2000:])
    assert done["attempts"] == 2 and str(b.proc.pid) in done["worker_id"]
    assert done["usage"]["completion_tokens"] == 3000
    types = [t for t in event_types(client, key, job["id"]) if t != "progress"]
    assert types == ["queued", "running", "worker_lost", "retry", "running", "succeeded"], types
    assert count_events(app, job["id"], "succeeded") == 1


def test_cancel_running_job(env, pg, own_redis, start_worker):
    app, client, key = env
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **FAST)
    warm = client.post("/jobs", json=short_job(), headers=auth(key)).get_json()
    wait_status(client, key, warm["id"], ("succeeded",))  # model loaded: the next job starts decoding at once
    job = client.post("/jobs", json=long_job(4000), headers=auth(key)).get_json()
    wait_status(client, key, job["id"], ("running",))
    time.sleep(0.3)
    t0 = time.monotonic()
    r = client.post(f"/jobs/{job['id']}/cancel", headers=auth(key))
    assert r.status_code == 200 and r.get_json()["status"] in ("cancelling", "cancelled")
    done = wait_status(client, key, job["id"], ("cancelled", "failed", "succeeded"), timeout=10)
    assert done["status"] == "cancelled" and done["error"]["code"] == "cancelled"
    assert time.monotonic() - t0 < 1.5
    assert [t for t in event_types(client, key, job["id"]) if t != "progress"][-2:] == ["cancelling", "cancelled"]
    nxt = client.post("/jobs", json=short_job(), headers=auth(key)).get_json()
    assert wait_status(client, key, nxt["id"], ("succeeded",))["status"] == "succeeded"


def test_job_over_time_limit_fails_and_worker_goes_on(env, pg, own_redis, start_worker):
    app, client, key = env
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **FAST)
    job = client.post("/jobs", json=long_job(200000, timeout_s=2), headers=auth(key))
    assert job.status_code == 422  # max_new_tokens above the limit is refused up front
    job = client.post("/jobs", json=long_job(4000, timeout_s=1), headers=auth(key)).get_json()
    done = wait_status(client, key, job["id"], ("failed", "succeeded"), timeout=60)
    assert done["status"] == "failed" and done["error"]["code"] == "timeout", done
    nxt = client.post("/jobs", json=short_job(), headers=auth(key)).get_json()
    assert wait_status(client, key, nxt["id"], ("succeeded",))["status"] == "succeeded"


def test_same_message_twice_runs_once(env, pg, own_redis, start_worker):
    app, client, key = env
    job = client.post("/jobs", json=long_job(50), headers=auth(key)).get_json()
    publisher = app.extensions["llmos"].publisher
    publisher.publish(job_id=job["id"], queue=job["queue"], priority=5)  # a second delivery of the same job
    publisher.publish(job_id=job["id"], queue=job["queue"], priority=5)
    w = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **FAST)
    done = wait_status(client, key, job["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded" and done["attempts"] == 1
    time.sleep(1.0)
    assert count_events(app, job["id"], "running") == 1
    assert count_events(app, job["id"], "succeeded") == 1
    assert w.log().count("not queued any more") == 2


def test_broker_down_at_submit(env, pg, own_redis, start_worker):
    app, client, key = env
    own_redis.stop()
    t0 = time.monotonic()
    r = client.post("/jobs", json=short_job(), headers=auth(key))
    assert r.status_code == 202, r.get_json()
    assert time.monotonic() - t0 < 10
    job = r.get_json()
    assert job["status"] == "queued"
    own_redis.start()
    start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **FAST)
    done = wait_status(client, key, job["id"], ("succeeded", "failed"), timeout=60)
    assert done["status"] == "succeeded" and done["attempts"] == 1
