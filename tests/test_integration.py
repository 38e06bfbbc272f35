"""End to end through real worker processes: PostgreSQL + Redis, and the embedded default (SQLite + filesystem
broker, `llmos dev`). Nothing here runs a task in-process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import ROOT, auth, make_key, unavailable, wait_status, worker_env

CAPITAL = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


def tiny_job(**over):
    body = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "Hello"},
            "params": {"max_new_tokens": 8, "temperature": 0}}
    body.update(over)
    return body


def test_generate_on_postgres_and_redis(client, key, admin_key, pg, redis_url, start_worker):
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4")
    r = client.post("/jobs", json=tiny_job(metadata={"run": "it"}), headers=auth(key))
    assert r.status_code == 202
    job_id = r.get_json()["id"]
    # long-poll: returns as soon as the job ends
    t0 = time.monotonic()
    body = client.get(f"/jobs/{job_id}?wait=60", headers=auth(key)).get_json()
    assert body["status"] == "succeeded", (body, w.log()[-2000:])
    assert time.monotonic() - t0 < 60
    assert body["output"]["finish_reason"] in ("stop", "length")
    assert isinstance(body["output"]["text"], str)
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] <= 8
    assert body["attempts"] == 1 and body["worker_id"].startswith("llmos-cpu-")
    assert body["metadata"] == {"run": "it"}
    assert body["started_at"] and body["finished_at"]
    events = client.get(f"/jobs/{job_id}/events", headers=auth(key)).get_json()["data"]
    assert [e["type"] for e in events] == ["queued", "running", "succeeded"]
    workers = client.get("/workers", headers=auth(admin_key)).get_json()["data"]
    mine = [x for x in workers if x["id"] == body["worker_id"]]
    assert mine and mine[0]["alive"] and mine[0]["gpu_type"] == "cpu"
    from app.jobs import kinds

    assert set(mine[0]["queues"]) == {f"{k.queue}.{t}" for k in kinds.all_kinds() for t in ("cpu", "any")}
    assert {"generate.cpu", "generate.any", "embed.any", "batch.any", "finetune.any", "echo.any"} <= set(
        mine[0]["queues"])  # every kind's family, plugins' included
    time.sleep(1.5)  # next heartbeat carries the loaded model
    mine = [x for x in client.get("/workers", headers=auth(admin_key)).get_json()["data"]
            if x["id"] == body["worker_id"]]
    assert "tiny-random-llama" in mine[0]["models_loaded"]


def test_smollm2_answers_paris(client, key, pg, redis_url, start_worker):
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2")
    r = client.post("/jobs", json={"kind": "generate", "model": "smollm2-135m-instruct", "input": CAPITAL,
                                   "params": {"max_new_tokens": 24, "temperature": 0}}, headers=auth(key))
    assert r.status_code == 202
    body = wait_status(client, key, r.get_json()["id"], ("succeeded", "failed"), timeout=240)
    assert body["status"] == "succeeded", body
    assert "Paris" in body["output"]["text"]


def _queued_in_redis(url: str, queue: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return sum(r.llen(k) for k in r.keys(f"{queue}*") if r.type(k) == b"list")
    finally:
        r.close()


def test_routing_by_gpu_type(client, key, pg, redis_url, start_worker):
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2")
    h100 = client.post("/jobs", json=tiny_job(gpu="h100"), headers=auth(key)).get_json()
    anyj = client.post("/jobs", json=tiny_job(gpu="any"), headers=auth(key)).get_json()
    pref = client.post("/jobs", json=tiny_job(gpu=["h100", "cpu"]), headers=auth(key)).get_json()
    assert h100["queue"] == "generate.h100" and anyj["queue"] == "generate.any"
    assert pref["queue"] == "generate.cpu"  # first preference with a live worker
    assert wait_status(client, key, anyj["id"], ("succeeded",))["status"] == "succeeded"
    assert wait_status(client, key, pref["id"], ("succeeded",))["status"] == "succeeded"
    time.sleep(1.0)
    still = client.get(f"/jobs/{h100['id']}", headers=auth(key)).get_json()
    assert still["status"] == "queued" and still["attempts"] == 0
    assert _queued_in_redis(redis_url, "generate.h100") == 1
    # the user learns at once that no H100 worker has ever been seen
    events = client.get(f"/jobs/{h100['id']}/events", headers=auth(key)).get_json()["data"]
    warning = [e for e in events if e["type"] == "warning"]
    assert warning and warning[0]["data"]["code"] == "no_worker_for_gpu"


@pytest.fixture(params=["redis", "amqp"])
def priority_broker(request, redis_url):
    if request.param == "redis":
        return redis_url
    import kombu

    url = os.environ.get("LLMOS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    try:
        with kombu.Connection(url, connect_timeout=3) as conn:
            conn.connect()
            for q in ("generate.l4", "generate.any"):
                with contextlib.suppress(Exception):  # not declared yet
                    conn.default_channel.queue_purge(q)
    except Exception as exc:  # noqa: BLE001
        unavailable("RabbitMQ", exc)
    return url


def test_priority(make_app, pg, priority_broker, start_worker):
    app = make_app(database_url=pg, broker_url=priority_broker)
    client, key = app.test_client(), make_key(app, "alice")
    low = [client.post("/jobs", json=tiny_job(gpu="l4", priority=0), headers=auth(key)).get_json()["id"]
           for _ in range(3)]
    high = [client.post("/jobs", json=tiny_job(gpu="l4", priority=9), headers=auth(key)).get_json()["id"]
            for _ in range(3)]
    start_worker(pg, priority_broker, "--gpu-type", "l4", "--concurrency", "1")
    done = {j: wait_status(client, key, j, ("succeeded",)) for j in low + high}
    order = sorted(done, key=lambda j: done[j]["started_at"])
    assert set(order[:3]) == set(high), order


# ---- the embedded default ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def embedded(tmp_path: Path):
    data = tmp_path / "embedded"
    env = worker_env("", "", data)
    for k in ("LLMOS_DATABASE_URL", "LLMOS_BROKER_URL"):
        env.pop(k)
    port = _free_port()
    log = open(tmp_path / "dev.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "dev", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            try:
                if requests.get(f"{base}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        key = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--owner", "dev"], env=env,
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        yield base, key, data
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_embedded_default(embedded):
    base, key, data = embedded
    assert (data / "llmos.db").exists() and (data / "broker").is_dir()
    h = auth(key)
    tiny = requests.post(f"{base}/jobs", json=tiny_job(), headers=h, timeout=10)
    assert tiny.status_code == 202, tiny.text
    smol = requests.post(f"{base}/jobs", json={"kind": "generate", "model": "smollm2-135m-instruct",
                                               "input": CAPITAL, "params": {"max_new_tokens": 24, "temperature": 0}},
                         headers=h, timeout=10).json()
    body = requests.get(f"{base}/jobs/{tiny.json()['id']}?wait=60", headers=h, timeout=70).json()
    assert body["status"] == "succeeded", body
    deadline = time.monotonic() + 240
    while True:
        body = requests.get(f"{base}/jobs/{smol['id']}?wait=30", headers=h, timeout=40).json()
        if body["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
    assert body["status"] == "succeeded", body
    assert "Paris" in body["output"]["text"]
    workers = requests.get(f"{base}/workers", headers=h, timeout=10).json()["data"]
    assert any(w["alive"] for w in workers)


def test_key_from_cli_only_sees_its_own(app, client, pg):
    other = make_key(app, "mallory")
    mine = make_key(app, "alice")
    job = client.post("/jobs", json=tiny_job(), headers=auth(mine)).get_json()
    assert client.get(f"/jobs/{job['id']}", headers=auth(other)).status_code == 404


def test_openai_sdk_example_on_the_embedded_default(embedded):
    """examples/openai_sdk.py as the README runs it: a streamed chat, a batch and a fine-tune through the
    official client against `llmos dev` (the tiny model keeps it to seconds; the text is random)."""
    base, key, _data = embedded
    r = subprocess.run([sys.executable, "examples/openai_sdk.py", "--key", key, "--base-url", f"{base}/v1",
                        "--model", "tiny-random-llama", "--timeout", "240"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "completed, 4/4 completed" in r.stdout, r.stdout
    assert "succeeded, model tiny-random-llama:ft-words-" in r.stdout, r.stdout
    assert "[metrics]" in r.stdout and "checkpoint step" in r.stdout, r.stdout
    chunks = int(r.stdout.split(" chunks)")[0].rsplit("(", 1)[1])
    assert chunks >= 2, r.stdout  # streamed through the embedded default's local channel, piece by piece
