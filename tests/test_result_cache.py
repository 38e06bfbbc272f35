"""The result cache: a deterministic request asked again is answered at submit, without a worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.services import registry
from app.services.result_cache import ResultCache, cacheable
from tests.conftest import MODEL_DIR, auth, make_key, wait_status

GREEDY = {"kind": "generate", "model": "tiny-random-llama", "input": {"prompt": "Hello there"},
          "params": {"max_new_tokens": 6, "temperature": 0}}


def post(client, key, body):
    r = client.post("/jobs", json=body, headers=auth(key))
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def test_hit_miss_opt_out_privacy_and_replacement(app, client, key, pg, redis_url, start_worker):
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2")
    first = wait_status(client, key, post(client, key, GREEDY)["id"], ("succeeded", "failed"), timeout=90)
    assert first["status"] == "succeeded" and not first["usage"].get("cached")
    seeded = {**GREEDY, "params": {"max_new_tokens": 6, "temperature": 1.0, "seed": 7}}
    seeded_first = wait_status(client, key, post(client, key, seeded)["id"], ("succeeded",), timeout=90)
    w.stop()  # from here on nothing can run a job

    t0 = time.monotonic()
    again = post(client, key, GREEDY)  # answered in the POST itself
    assert time.monotonic() - t0 < 1.0
    assert again["status"] == "succeeded" and again["output"] == first["output"] and again["id"] != first["id"]
    assert again["usage"]["cached"] is True and again["usage"]["completion_tokens"] == first["usage"][
        "completion_tokens"]
    events = client.get(f"/jobs/{again['id']}/events", headers=auth(key)).get_json()["data"]
    assert [e["type"] for e in events] == ["queued", "succeeded"]
    assert post(client, key, seeded)["output"] == seeded_first["output"]  # a fixed seed is deterministic too

    # misses: other params, the opt-out, another owner, a sampled (unseeded) request
    assert post(client, key, {**GREEDY, "params": {"max_new_tokens": 7, "temperature": 0}})["status"] == "queued"
    assert post(client, key, {**GREEDY, "cache": False})["status"] == "queued"
    assert post(client, make_key(app, "mallory"), GREEDY)["status"] == "queued"
    assert post(client, key, {**GREEDY, "params": {"max_new_tokens": 6}})["status"] == "queued"


def test_a_replaced_model_is_not_answered_from_its_old_results(app, client, key, pg, redis_url, start_worker):
    w = start_worker(pg, redis_url, "--gpu-type", "cpu")
    # the tiny model runs once, so that its converted directory exists to register a copy from
    wait_status(client, key, post(client, key, {**GREEDY, "cache": False})["id"], ("succeeded",), timeout=90)
    source = next(p for p in Path(MODEL_DIR).glob("tiny-random-llama-*") if (p / "config.json").exists())
    db = app.extensions["llmos"].db
    with db.session() as s:
        registry.add_model(session=s, name="tiny-copy", path=str(source))
    body = {**GREEDY, "model": "tiny-copy"}
    assert wait_status(client, key, post(client, key, body)["id"], ("succeeded", "failed"),
                       timeout=90)["status"] == "succeeded"
    w.stop()
    assert post(client, key, body)["status"] == "succeeded"  # cached
    with db.session() as s:
        registry.add_model(session=s, name="tiny-copy", path=str(source), replace=True)
    assert post(client, key, body)["status"] == "queued"  # a new version: its old results are not used


def test_v1_chat_repeat_is_cached(app, oai, pg, redis_url, start_worker):
    w = start_worker(pg, redis_url, "--gpu-type", "cpu")
    msgs = [{"role": "user", "content": "Say hi"}]
    one = oai.chat.completions.create(model="tiny-random-llama", messages=msgs, max_tokens=5, temperature=0)
    w.stop()
    two = oai.chat.completions.create(model="tiny-random-llama", messages=msgs, max_tokens=5, temperature=0)
    assert two.choices[0].message.content == one.choices[0].message.content and two.id != one.id


@pytest.mark.parametrize("store", ["database", "redis"])
def test_bounded_by_entries_and_ttl(make_app, pg, redis_url, tmp_path, store):
    broker = redis_url if store == "redis" else f"filesystem://{tmp_path}/broker"
    app = make_app(database_url=pg, broker_url=broker, result_cache_max_entries=2, result_cache_ttl_s=1)
    cache: ResultCache = app.extensions["llmos"].result_cache
    make_key(app, "alice")
    owner = 1  # alice, the first owner of this emptied database
    for k in ("a", "b", "c"):
        cache.put(k * 64, owner_id=owner, output={"text": k}, usage=None)
    assert cache.get("a" * 64) is None  # the oldest went first
    assert cache.get("c" * 64) == ({"text": "c"}, None)
    time.sleep(1.2)  # past a fixed TTL
    assert cache.get("c" * 64) is None


def test_what_is_deterministic():
    assert cacheable("generate", {"temperature": 0.0})
    assert cacheable("generate", {"temperature": 0.8, "seed": 3})
    assert not cacheable("generate", {"temperature": 0.8})
    assert not cacheable("generate", {"temperature": 0.0, "stream": True})
    assert cacheable("embed", {"normalize": True})
    assert not cacheable("echo", {})
