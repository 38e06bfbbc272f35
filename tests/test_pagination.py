"""The native API's lists, walked page by page: 250 items in pages of 10, each seen exactly once, the last page
marked by `next_cursor: null`; many items share a created_at (ties broken by the id), on PostgreSQL and SQLite."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select, update

from app.jobs import lifecycle
from app.models import Batch, File, JobEvent, WebhookDelivery
from tests.conftest import auth, make_key

N = 250
PAGE = 10
TIE = 7  # items per created_at: groups straddle page boundaries (7 does not divide 10)
BASE = datetime(2031, 5, 17, 12, 0, 0, 123456, tzinfo=timezone.utc)


class Clock:
    """lifecycle's utcnow, moved on by the test: item i is stamped BASE + (i // TIE) ms."""

    def __init__(self) -> None:
        self.i = 0

    def __call__(self) -> datetime:
        return BASE + timedelta(milliseconds=self.i // TIE)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(lifecycle, "utcnow", c)
    return c


@pytest.fixture(params=["postgresql", "sqlite"])
def env(request: pytest.FixtureRequest, make_app: Callable[..., Any]) -> tuple[Any, Any, str]:
    """(app, client, key) on PostgreSQL + Redis, or on the embedded default (SQLite + filesystem broker); webhook
    URLs on loopback allowed (the deliveries' receiver is never called: nothing sweeps them)."""
    if request.param == "postgresql":
        app = make_app(database_url=request.getfixturevalue("pg"), broker_url=request.getfixturevalue("redis_url"),
                       webhook_allow_private=True)
    else:
        from app.services import registry
        from migrations import upgrade

        app = make_app(webhook_allow_private=True)
        upgrade(app.extensions["llmos"].settings.database_url)
        with app.extensions["llmos"].db.session() as s:
            registry.seed_registry(session=s)
    return app, app.test_client(), make_key(app, "alice")


def walk(client: Any, key: str, path: str) -> list[dict[str, Any]]:
    """Every item of a list, following next_cursor from the first page to the one that has none."""
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(N):  # a cursor that never ends fails here, not by hanging
        sep = "&" if "?" in path else "?"
        r = client.get(f"{path}{sep}limit={PAGE}" + (f"&cursor={cursor}" if cursor else ""), headers=auth(key))
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert len(body["data"]) <= PAGE
        if "has_more" in body:  # where a list says it, it says what next_cursor says
            assert body["has_more"] is (body["next_cursor"] is not None)
        seen += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        assert len(body["data"]) == PAGE, "only the last page may be short"
    raise AssertionError(f"{path}: still a next_cursor after {N} pages")


def check_once(seen: list[dict[str, Any]], expected: set[str]) -> None:
    ids = [x["id"] for x in seen]
    assert len(ids) == len(set(ids)), "an item was repeated"
    assert set(ids) == expected, f"missing {len(expected - set(ids))}, unexpected {len(set(ids) - expected)}"


def check_newest_first_with_ties(seen: list[dict[str, Any]]) -> None:
    stamps = [x["created_at"] for x in seen]
    assert stamps == sorted(stamps, reverse=True)
    assert len(set(stamps)) == math.ceil(len(stamps) / TIE)  # ties really were there to break


def stamp_in_groups(app: Any, model: type, ids: list[str]) -> None:
    """The same created_at for every TIE consecutive rows (files and batches take theirs from a column default,
    not from the lifecycle's clock)."""
    with app.extensions["llmos"].db.session() as s:
        for i, row_id in enumerate(ids):
            s.execute(update(model).where(model.id == row_id)
                      .values(created_at=BASE + timedelta(milliseconds=i // TIE)))


def test_jobs_list_walks_every_job_once(env, clock):
    app, client, key = env
    created = []
    for i in range(N):
        clock.i = i
        r = client.post("/jobs", json={"kind": "echo", "input": {"i": i}}, headers=auth(key))
        assert r.status_code == 202, r.get_json()
        created.append(r.get_json()["id"])
    seen = walk(client, key, "/jobs")
    check_once(seen, set(created))
    check_newest_first_with_ties(seen)


def test_files_list_walks_every_file_once(env):
    app, client, key = env
    created = []
    for i in range(N):
        upload = {"purpose": "batch", "file": (io.BytesIO(b'{"text": "%d"}\n' % i), f"{i}.jsonl")}
        r = client.post("/files", data=upload, headers=auth(key), content_type="multipart/form-data")
        assert r.status_code == 201, r.get_json()
        created.append(r.get_json()["id"])
    stamp_in_groups(app, File, created)
    seen = walk(client, key, "/files")
    check_once(seen, set(created))
    check_newest_first_with_ties(seen)


def test_batches_list_walks_every_batch_once(env):
    app, client, key = env
    created = []
    for i in range(N):
        body = {"documents": [{"custom_id": f"d{i}", "text": f"document {i}"}], "model": "tiny-random-llama",
                "task": {"type": "generate", "template": "{text}"}, "params": {"max_new_tokens": 2}}
        r = client.post("/batches", json=body, headers=auth(key))
        assert r.status_code == 202, r.get_json()
        created.append(r.get_json()["id"])
    stamp_in_groups(app, Batch, created)
    seen = walk(client, key, "/batches")
    check_once(seen, set(created))
    check_newest_first_with_ties(seen)


def claimed_job_with_progress(app: Any, client: Any, key: str, clock: Clock) -> str:
    """One job with a webhook taking `progress`, claimed, then N progress reports through the lifecycle core:
    N progress events and N deliveries, stamped TIE at a time with the same instant."""
    r = client.post("/jobs", json={"kind": "echo", "input": {}, "webhook": "http://127.0.0.1:9/hook",
                                   "webhook_events": ["progress"]}, headers=auth(key))
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    db = app.extensions["llmos"].db
    with db.session() as s:
        c = lifecycle.claim(s, job_id=job_id, worker_id="w-pagination")
        assert c is not None
    for i in range(N):
        clock.i = i
        with db.session() as s:
            assert lifecycle.progress(s, job_id=job_id, attempt=c.attempt, done=i + 1, total=N)
    return job_id


def test_events_list_walks_every_event_once(env, clock):
    app, client, key = env
    job_id = claimed_job_with_progress(app, client, key, clock)
    with app.extensions["llmos"].db.session() as s:
        expected = {f"evt_{i}" for i in s.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id))}
    assert len(expected) == N + 2  # queued, running, N progress
    seen = walk(client, key, f"/jobs/{job_id}/events")
    check_once(seen, expected)
    stamps = [e["created_at"] for e in seen]
    assert stamps == sorted(stamps) and len(set(stamps)) < len(stamps)
    progress = [e["data"]["done"] for e in seen if e["type"] == "progress"]
    assert progress == list(range(1, N + 1))  # ties on created_at fall back to the id: oldest first still
    newest = walk(client, key, f"/jobs/{job_id}/events?order=desc")
    assert [e["id"] for e in newest] == [e["id"] for e in reversed(seen)]


def test_webhook_deliveries_list_walks_every_delivery_once_in_send_order(env, clock):
    app, client, key = env
    job_id = claimed_job_with_progress(app, client, key, clock)
    with app.extensions["llmos"].db.session() as s:
        rows = s.execute(select(WebhookDelivery.id, WebhookDelivery.seq).where(WebhookDelivery.job_id == job_id))
        seq = {d: n for d, n in rows}
    assert len(seq) == N
    seen = walk(client, key, f"/jobs/{job_id}/webhook-deliveries")
    check_once(seen, set(seq))
    assert [seq[d["id"]] for d in seen] == list(range(1, N + 1))  # the order they go out in, as before
    assert [d["type"] for d in seen] == ["job.progress"] * N
    assert len({d["created_at"] for d in seen}) == math.ceil(N / TIE)


def test_a_cursor_that_is_not_one_is_invalid_input(env):
    app, client, key = env
    job_id = client.post("/jobs", json={"kind": "echo", "input": {}}, headers=auth(key)).get_json()["id"]
    for _ in range(2):
        client.post("/jobs", json={"kind": "echo", "input": {}}, headers=auth(key))
    jobs_cursor = client.get("/jobs?limit=1", headers=auth(key)).get_json()["next_cursor"]
    assert jobs_cursor
    for path in ("/jobs", "/files", "/batches", f"/jobs/{job_id}/events", f"/jobs/{job_id}/webhook-deliveries"):
        for bad in ("nope", "!!!", "WzEsMiwzXQ"):  # not base64 JSON, not base64, a list of three
            r = client.get(f"{path}?cursor={bad}", headers=auth(key))
            assert r.status_code == 422 and r.get_json()["error"]["field"] == "cursor", (path, bad, r.get_json())
    # a (created_at, id) cursor is not a delivery cursor, and a delivery list's seq cursor is not a job cursor
    assert client.get(f"/jobs/{job_id}/webhook-deliveries?cursor={jobs_cursor}", headers=auth(key)).status_code == 422
    assert client.get("/jobs?cursor=WzJd", headers=auth(key)).status_code == 422  # [2]
