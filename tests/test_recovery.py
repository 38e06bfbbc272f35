"""A job lost with its worker is published again at once, whatever waits in its queue (no double run: the
claim is compare-and-set)."""

from __future__ import annotations

from datetime import timedelta

from app.jobs import dispatch, lifecycle
from app.models import JobEvent, Worker, utcnow
from app.services import workers
from app.services.scheduler import Scheduler
from tests.conftest import auth


def test_a_lost_job_is_published_again_behind_a_backlog(app, client, key):
    p = app.extensions["llmos"]
    ids = [client.post("/jobs", json={"kind": "echo", "input": {"i": i}}, headers=auth(key)).get_json()["id"]
           for i in range(50)]
    queue = "echo.any"
    p.dispatcher.flush()  # the fast path's sent marks, written now rather than within 0.2 s
    depth = p.publisher.queue_depth(queue)
    assert depth == 50
    lost = ids[-1]
    with p.db.session() as s:  # a worker took it, then stopped heart-beating
        workers.heartbeat(session=s, worker_id="w-gone", host="h", pid=1, gpu_type="cpu")
        assert lifecycle.claim(s, job_id=lost, worker_id="w-gone") is not None
        s.get(Worker, "w-gone").last_heartbeat_at = utcnow() - timedelta(minutes=10)
    scheduler = Scheduler(db=p.db, settings=p.settings, publisher=p.publisher, queue_depth=p.publisher.queue_depth)
    report = scheduler.reconcile()
    assert report.requeued == 1
    # its new message goes out with the next relay pass (rows older than 2 s; here at once), although 49 others
    # (and its old one, for all the broker knows) wait in the queue
    assert dispatch.relay(db=p.db, publisher=p.publisher, older_than_s=0) == 1
    assert p.publisher.queue_depth(queue) == depth + 1
    job = client.get(f"/jobs/{lost}", headers=auth(key)).get_json()
    assert job["status"] == "queued" and job["attempts"] == 1
    with p.db.session() as s:
        types = [e.type for e in s.query(JobEvent).filter(JobEvent.job_id == lost).order_by(JobEvent.id)]
    assert types[-2:] == ["worker_lost", "retry"]
