"""Long-polls take at most LLMOS_MAX_WAITING threads of a process: past that they answer at once, so
/healthz, reads and submissions always find a thread."""

from __future__ import annotations

import threading
import time

import requests
from werkzeug.serving import make_server

from tests.conftest import auth, make_key


def test_long_polls_past_the_bound_answer_at_once_and_the_rest_keep_serving(make_app, pg, redis_url):
    app = make_app(database_url=pg, broker_url=redis_url, max_waiting=2)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        h = auth(make_key(app, "alice"))
        job = requests.post(f"{base}/jobs", json={"kind": "echo", "input": {}}, headers=h, timeout=10).json()
        results: list[requests.Response] = []
        holders = [threading.Thread(target=lambda: results.append(
            requests.get(f"{base}/jobs/{job['id']}?wait=30", headers=h, timeout=40))) for _ in range(2)]
        for t in holders:
            t.start()
        waiters = app.extensions["llmos"].waiters
        deadline = time.monotonic() + 10
        while waiters.waiting(job["id"]) < 2:  # both hold their slot (an event, not a guess)
            assert time.monotonic() < deadline
            time.sleep(0.01)

        t0 = time.monotonic()
        third = requests.get(f"{base}/jobs/{job['id']}?wait=30", headers=h, timeout=40)
        assert time.monotonic() - t0 < 1.0
        assert third.status_code == 200 and third.json()["status"] == "queued"
        assert third.headers["Retry-After"] == "1" and third.headers["X-Long-Poll"] == "full"
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        posted = requests.post(f"{base}/jobs", json={"kind": "echo", "input": {}}, headers=h, timeout=5)
        assert posted.status_code == 202

        # the job ends: both waiting polls answer at once
        t0 = time.monotonic()
        assert requests.post(f"{base}/jobs/{job['id']}/cancel", headers=h, timeout=5).status_code == 200
        for t in holders:
            t.join(timeout=10)
        assert time.monotonic() - t0 < 5
        assert [r.json()["status"] for r in results] == ["cancelled", "cancelled"]
        assert all("X-Long-Poll" not in r.headers for r in results)
    finally:
        server.shutdown()
