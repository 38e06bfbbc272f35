"""Files and batches end to end through real worker processes: PostgreSQL + Redis, and the embedded default
(SQLite + filesystem broker, `llmos dev`). Nothing here runs a task in-process."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests import test_integration
from tests.conftest import ROOT, auth, make_key

embedded = test_integration.embedded  # the `llmos dev` fixture

TINY = "tiny-random-llama"


def docs(n: int, prefix: str = "d") -> list[dict]:
    return [{"custom_id": f"{prefix}{i}", "text": f"Document number {i} talks about topic {i % 7}."}
            for i in range(n)]


def gen_batch(documents: list[dict], **over) -> dict:
    body = {"documents": documents, "model": TINY,
            "task": {"type": "generate", "template": "Summarize:\n{text}\nSummary:"},
            "params": {"max_new_tokens": 4, "temperature": 0}}
    body.update(over)
    return body


def wait_batch(get, batch_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
               timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = get(f"/batches/{batch_id}")
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {body.get('status')} after {timeout}s: {body}")


def lines(raw: bytes) -> list[dict]:
    return [json.loads(x) for x in raw.decode().splitlines() if x.strip()]


@pytest.fixture
def api(client, key):
    """GET helper over the Flask test client."""
    return lambda path: client.get(path, headers=auth(key)).get_json()


def download(client, key, file_id: str) -> bytes:
    r = client.get(f"/files/{file_id}/content", headers=auth(key))
    assert r.status_code == 200, r.get_data()
    return r.get_data()


def upload(client, key, data: bytes, purpose: str = "batch", name: str = "docs.jsonl"):
    return client.post("/files", data={"purpose": purpose, "file": (io.BytesIO(data), name)},
                       headers=auth(key), content_type="multipart/form-data")


# ---- files ---------------------------------------------------------------------------------------------


def test_files_round_trip_owner_scoped(app, client, key):
    data = os.urandom(3 * 1024 * 1024 + 17)  # several copy chunks, binary, not line-shaped
    r = upload(client, key, data, purpose="fine-tune", name="weights.bin")
    assert r.status_code == 201, r.get_json()
    f = r.get_json()
    assert f["id"].startswith("file_") and f["bytes"] == len(data)
    assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["purpose"] == "fine-tune"
    listed = client.get("/files", headers=auth(key)).get_json()
    assert [x["id"] for x in listed["data"]] == [f["id"]] and listed["next_cursor"] is None
    assert client.get(f"/files/{f['id']}", headers=auth(key)).get_json()["filename"] == "weights.bin"
    assert download(client, key, f["id"]) == data
    other = make_key(app, "mallory")
    for method, path in (("get", f"/files/{f['id']}"), ("get", f"/files/{f['id']}/content"),
                         ("delete", f"/files/{f['id']}")):
        assert getattr(client, method)(path, headers=auth(other)).status_code == 404
    assert client.get("/files", headers=auth(other)).get_json()["data"] == []
    r = client.delete(f"/files/{f['id']}", headers=auth(key))
    assert r.status_code == 200 and r.get_json()["deleted"] is True
    assert client.get(f"/files/{f['id']}", headers=auth(key)).status_code == 404


def test_file_upload_limits_and_bad_input(make_app, pg, redis_url):
    app = make_app(database_url=pg, broker_url=redis_url, max_file_bytes=100_000)
    client, key = app.test_client(), make_key(app, "alice")
    r = upload(client, key, b"x" * 200_001)
    assert r.status_code == 413 and r.get_json()["error"]["code"] in ("file_too_large", "payload_too_large")
    r = upload(client, key, b"x" * 100_001)  # inside the multipart slack: refused while copying
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "file_too_large"
    assert upload(client, key, b"x" * 100_000).status_code == 201
    r = upload(client, key, b"{}", purpose="nonsense")
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "purpose"
    assert client.get("/files", headers=auth(key)).get_json()["data"].__len__() == 1
    assert not [p for p in (app.extensions["llmos"].settings.files_dir).iterdir() if p.name.startswith(".")]


# ---- validation up front -------------------------------------------------------------------------------


@pytest.mark.parametrize("body, field", [
    (gen_batch([{"custom_id": "a", "text": "x"}, {"custom_id": "a", "text": "y"}]), "documents.1.custom_id"),
    (gen_batch([{"custom_id": "a", "text": "x"}, {"custom_id": "b"}]), "documents.1.text"),
    (gen_batch([{"text": "x"}]), "documents.0.custom_id"),
    (gen_batch(docs(2), task={"type": "generate", "template": "{title}: {text}"}), "task.template"),
    (gen_batch(docs(2), task={"type": "generate", "template": "{text.__class__}"}), "task.template"),
    (gen_batch(docs(2), task={"type": "classify", "labels": ["a"]}), "task.labels"),
    (gen_batch(docs(2), task={"type": "translate"}), "task"),
    (gen_batch(docs(2), params={"max_new_tokens": 0}), "params.max_new_tokens"),
    (gen_batch(docs(2), task={"type": "embed"}, params={}), "model"),
    (gen_batch([]), "documents"),
    (gen_batch(docs(2), input_file_id="file_nope"), "documents"),
    (gen_batch(docs(2), gpu="tpu"), "gpu"),
])
def test_batch_bad_input_is_422_with_field(client, key, body, field):
    r = client.post("/batches", json=body, headers=auth(key))
    assert r.status_code == 422, r.get_json()
    err = r.get_json()["error"]
    assert err["field"] == field or err["field"].startswith(field), err


def test_batch_from_file_bad_line_and_other_owner(app, client, key):
    f = upload(client, key, b'{"custom_id": "a", "text": "x"}\nnot json\n').get_json()
    r = client.post("/batches", json={"input_file_id": f["id"], "model": TINY, "task": {"type": "generate"}},
                    headers=auth(key))
    assert r.status_code == 422 and "line 2" in r.get_json()["error"]["message"]
    other = make_key(app, "mallory")
    r = client.post("/batches", json={"input_file_id": f["id"], "model": TINY, "task": {"type": "generate"}},
                    headers=auth(other))
    assert r.status_code == 404


# ---- PostgreSQL + Redis with a real worker -------------------------------------------------------------


def test_thousand_documents_on_postgres_and_redis(client, key, api, pg, redis_url, start_worker):
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "8")
    documents = docs(1000)
    t0 = time.monotonic()
    r = client.post("/batches", json=gen_batch(documents, metadata={"run": "1k"}), headers=auth(key))
    accepted_s = time.monotonic() - t0
    assert r.status_code == 202, r.get_json()
    b = r.get_json()
    assert b["id"].startswith("batch_") and b["status"] == "queued" and b["queue"] == "batch.any"
    assert b["request_counts"] == {"total": 1000, "completed": 0, "failed": 0} and b["chunk_size"] == 64
    assert accepted_s < 10
    seen_running = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        cur = api(f"/batches/{b['id']}")
        seen_running |= cur["status"] == "running" and 0 < cur["progress"]["done"] < 1000
        if cur["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert cur["status"] == "succeeded", (cur, w.log()[-3000:])
    assert cur["request_counts"] == {"total": 1000, "completed": 1000, "failed": 0}
    assert cur["progress"] == {"done": 1000, "total": 1000, "fraction": 1.0}
    assert cur["error_file_id"] is None and cur["metadata"] == {"run": "1k"}
    out = lines(download(client, key, cur["output_file_id"]))
    assert [x["custom_id"] for x in out] == [d["custom_id"] for d in documents]
    assert all(x["error"] is None and isinstance(x["output"]["text"], str) for x in out)
    meta = api(f"/files/{cur['output_file_id']}")
    assert meta["purpose"] == "batch_output" and meta["bytes"] > 0
    # documents of a chunk shared forward passes in the engine
    assert "state=succeeded" in w.log() or "chunk=" in w.log()
    listed = api("/batches?limit=1")
    assert listed["data"][0]["id"] == b["id"]


def test_classify_extract_and_failing_documents(client, key, api, pg, redis_url, start_worker):
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "8")
    labels = ["sports", "politics", "science"]
    c = client.post("/batches", json={"documents": docs(40), "model": TINY,
                                      "task": {"type": "classify", "labels": labels}}, headers=auth(key)).get_json()
    fields = ["person", "place"]
    e = client.post("/batches", json={"documents": docs(20), "model": TINY, "params": {"max_new_tokens": 3},
                                      "task": {"type": "extract", "fields": fields}}, headers=auth(key)).get_json()
    # a file: two documents fail alone (too long; a template field it lacks), the rest succeed
    rows = [{"custom_id": f"f{i}", "text": f"text {i}", "title": f"T{i}"} for i in range(30)]
    rows[3] = {"custom_id": "f3", "text": "x" * 40_000, "title": "long"}
    rows[7] = {"custom_id": "f7", "text": "no title here"}
    f = upload(client, key, "".join(json.dumps(x) + "\n" for x in rows).encode()).get_json()
    g = client.post("/batches", json={"input_file_id": f["id"], "model": TINY, "chunk_size": 8,
                                      "task": {"type": "generate", "template": "{title}: {text}"},
                                      "params": {"max_new_tokens": 3, "temperature": 0}}, headers=auth(key))
    assert g.status_code == 202, g.get_json()
    g = g.get_json()
    assert g["input_file_id"] == f["id"]

    c = wait_batch(api, c["id"])
    assert c["status"] == "succeeded" and c["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
    out = lines(download(client, key, c["output_file_id"]))
    assert len(out) == 40 and all(x["output"]["label"] in labels for x in out)
    assert all(set(x["output"]["scores"]) == set(labels) for x in out)

    e = wait_batch(api, e["id"])
    assert e["status"] == "succeeded", e
    for x in lines(download(client, key, e["output_file_id"])):
        parsed = json.loads(json.dumps(x["output"]))
        assert isinstance(parsed, dict) and list(parsed) == fields and all(isinstance(v, str) for v in parsed.values())

    g = wait_batch(api, g["id"])
    errs = {x["custom_id"]: x["error"] for x in lines(download(client, key, g["error_file_id"]))}
    assert g["status"] == "succeeded" and g["request_counts"] == {"total": 30, "completed": 28, "failed": 2}, errs
    out = lines(download(client, key, g["output_file_id"]))
    assert [x["custom_id"] for x in out] == [x["custom_id"] for x in rows]
    assert set(errs) == {"f3", "f7"}
    assert errs["f3"]["code"] == "invalid_input" and "characters; the limit is" in errs["f3"]["message"]
    assert errs["f7"]["code"] == "invalid_input" and "{title}" in errs["f7"]["message"]


def test_cancel_halfway_keeps_what_finished(client, key, api, pg, redis_url, start_worker):
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2")
    body = gen_batch(docs(600), chunk_size=8, params={"max_new_tokens": 24, "min_new_tokens": 24,
                                                      "temperature": 0})
    b = client.post("/batches", json=body, headers=auth(key)).get_json()
    deadline = time.monotonic() + 120
    while api(f"/batches/{b['id']}")["progress"]["done"] < 40:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = client.post(f"/batches/{b['id']}/cancel", headers=auth(key))
    assert r.status_code == 200 and r.get_json()["status"] in ("cancelling", "cancelled")
    done = wait_batch(api, b["id"], timeout=60)
    assert done["status"] == "cancelled" and done["error"]["code"] == "cancelled"
    n = done["request_counts"]["completed"]
    assert 40 <= n < 600 and done["request_counts"]["failed"] == 0
    out = lines(download(client, key, done["output_file_id"]))
    assert len(out) == n and all(x["output"] is not None for x in out)
    order = [int(x["custom_id"][1:]) for x in out]
    assert order == sorted(order)
    assert client.post(f"/batches/{b['id']}/cancel", headers=auth(key)).status_code == 200  # idempotent


def test_embeddings_minilm_job_and_batch(client, key, api, pg, redis_url, start_worker):
    start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4")
    models = {m["id"]: m for m in api("/models")["data"]}
    assert models["all-minilm-l6-v2"]["kind"] == "embedding"
    job = client.post("/jobs", json={"kind": "embed", "model": "all-minilm-l6-v2",
                                     "input": {"text": "A cat sits on the mat."}}, headers=auth(key)).get_json()
    assert job["queue"] == "embed.any"
    body = client.get(f"/jobs/{job['id']}?wait=60", headers=auth(key)).get_json()
    assert body["status"] == "succeeded", body
    vec = body["output"]["embedding"]
    assert len(vec) == 384 and abs(sum(v * v for v in vec) - 1.0) < 1e-4
    sentences = [("cat1", "A cat sits on the mat."), ("cat2", "There is a cat lying on the rug."),
                 ("stock", "Stock markets fell sharply after the central bank raised interest rates.")]
    b = client.post("/batches", json={"documents": [{"custom_id": c, "text": t} for c, t in sentences],
                                      "model": "all-minilm-l6-v2", "task": {"type": "embed"}},
                    headers=auth(key)).get_json()
    b = wait_batch(api, b["id"])
    assert b["status"] == "succeeded", b
    vecs = {x["custom_id"]: x["output"]["embedding"] for x in lines(download(client, key, b["output_file_id"]))}
    cos = lambda a, c: sum(x * y for x, y in zip(vecs[a], vecs[c], strict=True))  # noqa: E731 - normalised
    assert cos("cat1", "cat2") > cos("cat1", "stock") + 0.3
    assert cos("cat1", "cat2") > cos("cat2", "stock") + 0.3
    assert max(abs(x - y) for x, y in zip(vecs["cat1"], vec, strict=True)) < 1e-4  # same as the single job


# ---- reliability: duplicate delivery, a worker killed mid-chunk ------------------------------------------

FAST = {"LLMOS_WORKER_LOST_AFTER_S": "3", "LLMOS_RECONCILE_INTERVAL_S": "0.5", "LLMOS_REPUBLISH_AFTER_S": "3"}


def test_duplicate_chunk_delivery_and_killed_worker(make_app, pg, own_redis, start_worker):
    app = make_app(database_url=pg, broker_url=own_redis.url, worker_lost_after_s=3)
    client, key = app.test_client(), make_key(app, "alice")
    body = gen_batch(docs(96), chunk_size=16, params={"max_new_tokens": 200, "min_new_tokens": 200,
                                                      "temperature": 0})
    b = client.post("/batches", json=body, headers=auth(key)).get_json()
    # a batch's chunks are jobs of the core, listed with ?batch_id= (and only then)
    chunks = client.get(f"/jobs?batch_id={b['id']}&limit=100", headers=auth(key)).get_json()["data"]
    assert sorted(c["input"]["seq"] for c in chunks) == list(range(6))
    assert {c["kind"] for c in chunks} == {"batch"} and {c["batch_id"] for c in chunks} == {b["id"]}
    assert client.get("/jobs", headers=auth(key)).get_json()["data"] == []
    publisher = app.extensions["llmos"].publisher
    for c in chunks:  # every chunk delivered a second time
        publisher.publish(job_id=c["id"], queue=c["queue"], priority=5)
    a = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "2", **FAST)
    get = lambda p: client.get(p, headers=auth(key)).get_json()  # noqa: E731
    deadline = time.monotonic() + 120
    while get(f"/batches/{b['id']}")["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    a.stop(signal.SIGKILL)  # dies with chunks claimed
    w = start_worker(pg, own_redis.url, "--gpu-type", "cpu", "--concurrency", "4", **FAST)
    done = wait_batch(get, b["id"], timeout=300)
    assert done["status"] == "succeeded", (done, w.log()[-3000:])
    assert done["request_counts"] == {"total": 96, "completed": 96, "failed": 0}
    out = lines(client.get(f"/files/{done['output_file_id']}/content", headers=auth(key)).get_data())
    assert [x["custom_id"] for x in out] == [f"d{i}" for i in range(96)]
    assert "not queued any more" in a.log() + w.log()  # the duplicates were skipped
    chunks = client.get(f"/jobs?batch_id={b['id']}&limit=100", headers=auth(key)).get_json()["data"]
    assert {c["status"] for c in chunks} == {"succeeded"}
    lost = [c for c in chunks if c["attempts"] > 1]
    assert lost, "the killed worker held chunks; they ran again"
    events = client.get(f"/jobs/{lost[0]['id']}/events", headers=auth(key)).get_json()["data"]
    assert "worker_lost" in [e["type"] for e in events]


# ---- the embedded default ------------------------------------------------------------------------------


def test_batch_on_embedded_default(embedded):
    base, key, data = embedded
    h = auth(key)
    documents = docs(1000)
    r = requests.post(f"{base}/batches", json=gen_batch(documents), headers=h, timeout=60)
    assert r.status_code == 202, r.text
    get = lambda p: requests.get(f"{base}{p}", headers=h, timeout=10).json()  # noqa: E731
    done = wait_batch(get, r.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert done["request_counts"] == {"total": 1000, "completed": 1000, "failed": 0}
    raw = requests.get(f"{base}/files/{done['output_file_id']}/content", headers=h, timeout=30).content
    assert [x["custom_id"] for x in lines(raw)] == [d["custom_id"] for d in documents]

    # the CLI: upload, submit, progress bar, output file written
    src, dest = data.parent / "cli_docs.jsonl", data.parent / "cli_out.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs(50, "c")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(LLMOS_URL=base, LLMOS_API_KEY=key)
    run = subprocess.run([sys.executable, "-m", "app.cli", "batch", "submit", str(src), "--task", "classify",
                          "--labels", "spam,ham", "--model", TINY, "--wait", "--output", str(dest)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    batch_id = run.stdout.strip().splitlines()[0]
    assert batch_id.startswith("batch_") and "50 completed" in run.stderr
    out = lines(dest.read_bytes())
    assert [x["custom_id"] for x in out] == [f"c{i}" for i in range(50)]
    assert {x["output"]["label"] for x in out} <= {"spam", "ham"}
    status = subprocess.run([sys.executable, "-m", "app.cli", "batch", "status", batch_id], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
