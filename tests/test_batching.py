"""Concurrent jobs share forward passes in a real worker and get the same outputs as alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import auth, wait_status


def job(i: int, tokens: int = 12) -> dict:
    return {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": f"job {i}: " + "word " * (i % 9)},
            "params": {"max_new_tokens": tokens, "min_new_tokens": tokens, "temperature": 0}}


def test_64_concurrent_jobs_equal_alone_and_cancel_leaves_others(client, key, pg, redis_url, start_worker):
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "72")
    alone = {}
    for i in range(64):  # one at a time: each runs in a batch of its own
        jid = client.post("/jobs", json=job(i), headers=auth(key)).get_json()["id"]
        body = client.get(f"/jobs/{jid}?wait=30", headers=auth(key)).get_json()
        assert body["status"] == "succeeded" and body["usage"]["batch_size"] == 1
        alone[i] = body["output"]["text"]

    victim = client.post("/jobs", json=job(999, tokens=4000), headers=auth(key)).get_json()["id"]
    wait_status(client, key, victim, ("running",))
    with ThreadPoolExecutor(16) as pool:
        # the same requests again, run again (not answered from the result cache)
        ids = list(pool.map(lambda i: client.post("/jobs", json={**job(i), "cache": False},
                                                  headers=auth(key)).get_json()["id"], range(64)))
    assert client.post(f"/jobs/{victim}/cancel", headers=auth(key)).status_code == 200
    together = [wait_status(client, key, j, ("succeeded", "failed")) for j in ids]
    assert all(b["status"] == "succeeded" for b in together)
    assert [b["output"]["text"] for b in together] == [alone[i] for i in range(64)]
    assert max(b["usage"]["batch_size"] for b in together) > 8  # they really shared forward passes
    assert wait_status(client, key, victim, ("cancelled",))["error"]["code"] == "cancelled"
