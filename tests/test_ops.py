"""What an operator sees: /metrics (API and worker) checked against the database, /readyz, request ids, JSON logs
carrying request_id and job_id."""

from __future__ import annotations

import json
import logging
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import auth, free_port, wait_status


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}, parsed by prometheus-client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict, name: str, **labels: str) -> float:
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


def total(got: dict, name: str, **labels: str) -> float:
    """Sum over the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in got.items() if n == name and labels.items() <= dict(ls).items())


def test_metrics_after_jobs_ran_match_the_database(app, client, key, pg, redis_url, start_worker):
    from app.models import Job

    port = free_port()
    wp = start_worker(pg, redis_url, LLMOS_WORKER_METRICS_PORT=str(port), LLMOS_LOG_FORMAT="json")
    h = auth(key)
    echo_ids = [client.post("/jobs", json={"kind": "echo", "input": {"n": i}}, headers=h).get_json()["id"]
                for i in range(4)]
    gen_ids = []
    for i in range(2):  # one after the other: the second is a cache hit (a request waiting on a load is neither)
        gen_ids.append(client.post("/jobs", json={"kind": "generate", "model": "tiny-random-llama",
                                                  "input": {"prompt": f"hello {i}"},
                                                  "params": {"max_new_tokens": 5, "temperature": 0}},
                                   headers=h).get_json()["id"])
        wait_status(client, key, gen_ids[-1], ("succeeded",), timeout=90)
    # nobody serves h100 here: it stays queued, so its queue has a depth and an oldest age
    stuck = client.post("/jobs", json={"kind": "echo", "input": {}, "gpu": "h100"}, headers=h).get_json()
    assert stuck["queue"] == "echo.h100"
    cancelled = client.post("/jobs", json={"kind": "echo", "input": {}, "gpu": "h100"}, headers=h).get_json()
    assert client.post(f"/jobs/{cancelled['id']}/cancel", headers=h).status_code == 200
    for job_id in echo_ids + gen_ids:
        assert wait_status(client, key, job_id, ("succeeded",), timeout=90)["status"] == "succeeded"
    assert client.get("/jobs/job_nope", headers=h).status_code == 404
    time.sleep(0.2)

    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain")
    api = samples(resp.get_data(as_text=True))
    with app.extensions["llmos"].db.session() as s:
        by_kind_status = {(k, getattr(st, "value", st)): n for k, st, n in
                          s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))}
        oldest = s.scalar(select(func.min(Job.created_at)).where(Job.queue == "echo.h100", Job.status == "queued"))
        gen_usage = [u for (u,) in s.execute(select(Job.usage).where(Job.id.in_(gen_ids)))]
    assert by_kind_status == {("echo", "succeeded"): 4, ("generate", "succeeded"): 2, ("echo", "queued"): 1,
                              ("echo", "cancelled"): 1}
    for (kind, status), n in by_kind_status.items():
        assert value(api, "llmos_jobs", kind=kind, status=status) == n, (kind, status)
    assert value(api, "llmos_database_up") == 1
    assert value(api, "llmos_queue_depth", queue="echo.h100") == 1
    assert value(api, "llmos_queue_depth", queue="echo.any") == 0
    age = value(api, "llmos_queue_oldest_age_seconds", queue="echo.h100")
    from app.models import utcnow

    assert 0 < age <= (utcnow() - oldest).total_seconds() + 1
    assert value(api, "llmos_workers", gpu_type="cpu", state="alive") == 1
    # HTTP: every POST /jobs above was counted with its route template and status
    assert value(api, "llmos_http_requests_total", route="/jobs", method="POST", status="202") >= 8
    assert value(api, "llmos_http_requests_total", route="/jobs/<string:job_id>", method="GET", status="404") >= 1
    assert total(api, "llmos_http_request_duration_seconds_count", route="/jobs", method="POST") >= 8

    # the worker's own port: what it ran, the queue wait, tokens, the model cache
    worker = samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    assert total(worker, "llmos_worker_jobs_total", kind="echo", outcome="succeeded") == 4
    assert total(worker, "llmos_worker_jobs_total", kind="generate", outcome="succeeded") == 2
    assert total(worker, "llmos_job_queue_wait_seconds_count") == 6  # the cancelled and stuck ones never ran
    assert total(worker, "llmos_job_run_seconds_count", outcome="succeeded") == 6
    completion = sum(u["completion_tokens"] for u in gen_usage)
    assert completion > 0
    assert total(worker, "llmos_tokens_generated_total", model="tiny-random-llama") == completion
    assert total(worker, "llmos_generation_tokens_per_second_count", model="tiny-random-llama") == 2
    assert total(worker, "llmos_model_cache_loads_total") == 1
    assert total(worker, "llmos_model_cache_misses_total") == 1
    assert total(worker, "llmos_model_cache_hits_total") == 1
    assert total(worker, "llmos_model_cache_bytes") > 0
    assert total(worker, "llmos_device_memory_bytes", state="total") > 0

    # the worker's log: JSON lines, and those written for a job carry its job_id
    lines = [json.loads(line) for line in wp.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert any(line.get("job_id") == echo_ids[0] and "state=succeeded" in line["msg"] for line in lines)


def test_metrics_token_and_request_ids(make_app, pg, redis_url):
    app = make_app(database_url=pg, broker_url=redis_url, metrics_token="s3cret")
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    mine = client.get("/healthz", headers={"X-Request-ID": "req-from-the-client.1"})
    assert mine.headers["X-Request-ID"] == "req-from-the-client.1"
    made = client.get("/nope")
    assert made.status_code == 404 and len(made.headers["X-Request-ID"]) == 32
    bad = client.get("/healthz", headers={"X-Request-ID": "x" * 500})  # not echoed back: a fresh one instead
    assert bad.headers["X-Request-ID"] != "x" * 500


def test_readyz(make_app, pg, redis_url, own_redis, tmp_path):
    app = make_app(database_url=pg, broker_url=redis_url)
    r = app.test_client().get("/readyz")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["migrations"]["current"] == body["checks"]["migrations"]["head"]

    # a broker that went away: not ready (503), while /healthz (alive) still answers
    app2 = make_app(database_url=pg, broker_url=own_redis.url)
    c2 = app2.test_client()
    own_redis.stop()
    r = c2.get("/readyz")
    assert r.status_code == 503 and r.get_json()["checks"]["broker"]["ok"] is False
    assert r.headers["Retry-After"]

    # a database never migrated: not ready, and says which revision it lacks
    app3 = make_app(database_url=f"sqlite:///{tmp_path / 'empty.db'}", broker_url="filesystem://")
    r = app3.test_client().get("/readyz")
    body = r.get_json()
    assert r.status_code == 503 and body["checks"]["database"]["ok"] is True
    assert body["checks"]["migrations"]["ok"] is False and body["checks"]["migrations"]["current"] is None


def test_json_logs_carry_request_and_job_ids(capsys):
    from app import logging_setup

    logging_setup.configure("json")
    try:
        log = logging.getLogger("llmos.test")
        token = logging_setup.request_id.set("r-1")
        try:
            log.info("hello %s", "there", extra={"status": 202})
        finally:
            logging_setup.request_id.reset(token)
        with logging_setup.job_context("job_abc"):
            log.warning("in a job")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0] | {"ts": None} == {"ts": None, "level": "info", "logger": "llmos.test", "msg": "hello there",
                                       "request_id": "r-1", "status": 202}
    assert lines[1]["job_id"] == "job_abc" and "request_id" not in lines[1]
    assert lines[2]["level"] == "error" and "ValueError: boom" in lines[2]["exc"]


@pytest.mark.parametrize("fmt", ["text"])
def test_text_logs_are_one_readable_line(capsys, fmt):
    from app import logging_setup

    logging_setup.configure(fmt)
    try:
        with logging_setup.job_context("job_x"):
            logging.getLogger("llmos.worker").info("job=%s state=running", "job_x")
    finally:
        logging.getLogger().handlers.clear()
    (line,) = capsys.readouterr().err.splitlines()
    assert "INFO" in line and "state=running" in line and line.endswith("job=job_x")
