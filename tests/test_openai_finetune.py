"""/v1/fine_tuning/jobs driven by the official openai client against a live server and a real worker: every
/v1 fine-tuning job is a native `finetune` job, and the model it makes serves native generate jobs."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.conftest import auth, make_key, wait_status

BASE = "tiny-random-llama"
CHATS = [("Capital of France?", "Paris"), ("Capital of Italy?", "Rome"), ("Capital of Spain?", "Madrid"),
         ("Capital of Peru?", "Lima"), ("Capital of Japan?", "Tokyo"), ("Capital of Chile?", "Santiago")]


def chat_jsonl(rows: list[tuple[str, str]] = CHATS) -> bytes:
    return "".join(json.dumps({"messages": [{"role": "system", "content": "Answer briefly."},
                                            {"role": "user", "content": q},
                                            {"role": "assistant", "content": a}]}) + "\n" for q, a in rows).encode()


def upload(oai, data: bytes, name: str = "train.jsonl") -> str:
    return oai.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id


def wait_job(oai, job_id: str, statuses: tuple[str, ...], timeout: float = 240):
    deadline = time.monotonic() + timeout
    while (job := oai.fine_tuning.jobs.retrieve(job_id)).status not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def test_fine_tune_through_the_openai_client(oai, client, key, pg, redis_url, start_worker):
    train, valid = upload(oai, chat_jsonl()), upload(oai, chat_jsonl(CHATS[:2]), "valid.jsonl")
    w = start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4")
    job = oai.fine_tuning.jobs.create(model=BASE, training_file=train, validation_file=valid, suffix="capitals",
                                      seed=7, metadata={"team": "geo"},
                                      hyperparameters={"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 2})
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job" and job.model == BASE
    assert job.status in ("queued", "running") and job.fine_tuned_model is None and job.finished_at is None
    assert job.training_file == train and job.validation_file == valid and job.organization_id == "alice"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == 2 and job.seed == 7 and job.metadata == {"team": "geo"}

    # it is a native finetune job, submitted like POST /jobs
    native_id = "job_" + job.id.removeprefix("ftjob-")
    native = client.get(f"/jobs/{native_id}", headers=auth(key)).get_json()
    assert native["kind"] == "finetune" and native["model"] == BASE and native["queue"] == "finetune.any"
    assert native["input"] == {"training_file": "file_" + train.removeprefix("file-"),
                               "validation_file": "file_" + valid.removeprefix("file-")}
    assert native["params"]["learning_rate"] == pytest.approx(4e-4) and native["params"]["suffix"] == "capitals"
    assert native_id in [j["id"] for j in client.get("/jobs?kind=finetune", headers=auth(key)).get_json()["data"]]

    done = wait_job(oai, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", (done, w.log()[-3000:])
    name = f"{BASE}:ft-capitals-{native_id[4:12]}"
    assert done.fine_tuned_model == name and done.trained_tokens and done.trained_tokens > 0
    assert isinstance(done.finished_at, int) and done.finished_at >= done.created_at and done.error is None
    assert done.user_provided_suffix == "capitals"  # type: ignore[attr-defined]

    # events: newest first, paged by `after`, with the training metrics
    events = list(oai.fine_tuning.jobs.list_events(job.id, limit=3))
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)) > 3 and all(e.object == "fine_tuning.job.event" for e in events)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    assert events[0].message == "Job succeeded: finished"  # the last thing that happened comes first
    assert events[-1].message.startswith("queued") and all(e.level == "info" for e in events)
    metrics = [e for e in events if e.type == "metrics"]
    assert [m.data["step"] for m in metrics] == [6, 3]  # 6 examples / batch 2 = 3 steps an epoch, 2 epochs
    assert all({"train_loss", "valid_loss", "total_steps"} <= m.data.keys() for m in metrics)
    read = next(e for e in events if e.message.startswith("training_file"))
    assert read.data == {"file": train, "examples": 6, "truncated": 0, "skipped": 0, "tokens": read.data["tokens"],
                         "trained_tokens": read.data["trained_tokens"]}
    first = oai.fine_tuning.jobs.list_events(job.id, limit=2)
    assert first.has_more and [e.id for e in first.data] == ids[:2]

    # checkpoints: one per epoch, newest first
    ckpts = list(oai.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in ckpts] == [6, 3] and all(c.id.startswith("ftckpt-") for c in ckpts)
    assert ckpts[0].fine_tuning_job_id == job.id and ckpts[0].object == "fine_tuning.job.checkpoint"
    assert ckpts[0].fine_tuned_model_checkpoint == f"{name}:ckpt-step-6"
    assert ckpts[0].metrics.step == 6 and ckpts[0].metrics.train_loss is not None
    assert ckpts[0].metrics.valid_loss is not None
    saved = next(e for e in events if e.message.startswith("checkpoint at step 6"))
    assert saved.data["checkpoint_id"] == ckpts[0].id

    # the new model is the owner's, and it answers
    model = next(m for m in oai.models.list() if m.id == name)
    assert model.owned_by == "alice"
    r = client.post("/jobs", headers=auth(key), json={"kind": "generate", "model": name, "params": {
        "max_new_tokens": 4, "temperature": 0}, "input": {"messages": [{"role": "user", "content": "Capital?"}]}})
    assert r.status_code == 202, r.get_json()
    answered = wait_status(client, key, r.get_json()["id"], ("succeeded", "failed"), timeout=120)
    assert answered["status"] == "succeeded" and answered["output"]["text"], answered

    # ... on /v1/chat/completions too, with the same greedy text as the native job
    chat = oai.chat.completions.create(model=name, messages=[{"role": "user", "content": "Capital?"}], max_tokens=4,
                                       temperature=0)
    assert chat.model == name and chat.choices[0].message.content == answered["output"]["text"]

    # ... and in a batch
    line = {"custom_id": "ft", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": name, "messages": [{"role": "user", "content": "Capital?"}], "max_tokens": 4, "temperature": 0}}
    bfile = oai.files.create(file=("b.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    batch = oai.batches.create(input_file_id=bfile.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = oai.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 1, batch
    [out] = [json.loads(x) for x in oai.files.content(batch.output_file_id).text.splitlines()]
    assert out["response"]["body"]["choices"][0]["message"]["content"] == answered["output"]["text"]

    # the owner may delete it; then it is gone
    assert oai.models.delete(name).deleted
    assert name not in {m.id for m in oai.models.list()}
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve(name)

    # cancelling a running job: shown as cancelled at once, ends cancelled natively
    long = oai.fine_tuning.jobs.create(model=BASE, training_file=train,
                                       hyperparameters={"n_epochs": 500, "batch_size": 1})
    native_long = "job_" + long.id.removeprefix("ftjob-")
    wait_status(client, key, native_long, ("running",), timeout=60)
    stopped = oai.fine_tuning.jobs.cancel(long.id)
    assert stopped.id == long.id and stopped.status == "cancelled" and stopped.fine_tuned_model is None
    assert wait_status(client, key, native_long, ("cancelled",), timeout=60)["status"] == "cancelled"
    assert oai.fine_tuning.jobs.retrieve(long.id).status == "cancelled"
    with pytest.raises(openai.ConflictError) as err:
        oai.fine_tuning.jobs.cancel(job.id)
    assert err.value.body["message"].startswith(f"fine-tuning job {job.id} already succeeded")


def test_queued_cancel_errors_and_pagination(oai, client, key, app, live_api):
    train = upload(oai, chat_jsonl())
    made = [oai.fine_tuning.jobs.create(model=BASE, training_file=train).id for _ in range(23)]
    job = oai.fine_tuning.jobs.retrieve(made[0])
    assert job.status == "queued" and job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 8
    assert job.hyperparameters.learning_rate_multiplier == 1 and isinstance(job.seed, int)
    assert job.result_files == [] and job.trained_tokens is None and job.error is None

    # "auto" keeps the native defaults; newer clients send them under method.supervised
    auto = oai.fine_tuning.jobs.create(model=BASE, training_file=train, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": "auto"}}})
    assert auto.hyperparameters.n_epochs == 4 and auto.hyperparameters.batch_size == 8
    made.append(auto.id)

    # list: only this owner's fine-tuning jobs, newest first, every one once through auto-pagination
    client.post("/jobs", headers=auth(key), json={"kind": "generate", "model": BASE, "input": {"prompt": "x"}})
    theirs = openai.OpenAI(base_url=f"{live_api}/v1", api_key=make_key(app, "mallory"), max_retries=0)
    theirs_id = theirs.fine_tuning.jobs.create(model=BASE, training_file=upload(theirs, chat_jsonl())).id
    page = oai.fine_tuning.jobs.list(limit=10)
    assert len(page.data) == 10 and page.has_more and page.data[0].id == auto.id
    seen = [j.id for j in oai.fine_tuning.jobs.list(limit=10)]
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen)) == 24
    assert [j.created_at for j in oai.fine_tuning.jobs.list(limit=100)] == sorted(
        (j.created_at for j in oai.fine_tuning.jobs.list(limit=100)), reverse=True)

    # cancel a queued job: it never runs
    cancelled = oai.fine_tuning.jobs.cancel(made[0])
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    native = client.get(f"/jobs/job_{made[0].removeprefix('ftjob-')}", headers=auth(key)).get_json()
    assert native["status"] == "cancelled" and native["started_at"] is None
    assert oai.fine_tuning.jobs.cancel(made[0]).status == "cancelled"  # a second cancel changes nothing

    # unknown ids, someone else's job, a job of another kind
    generate_id = client.get("/jobs?kind=generate", headers=auth(key)).get_json()["data"][0]["id"]
    for missing in ("ftjob-0000", theirs_id, generate_id):
        with pytest.raises(openai.NotFoundError) as err:
            oai.fine_tuning.jobs.retrieve(missing)
        assert err.value.body["code"] == "not_found" and missing in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.cancel("ftjob-0000")
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.list_events("ftjob-0000")
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.checkpoints.list("ftjob-0000")

    # bad requests name the /v1 parameter; nothing is accepted
    before = len(client.get("/jobs?kind=finetune&limit=100", headers=auth(key)).get_json()["data"])
    batch_file = oai.files.create(file=("b.jsonl", io.BytesIO(chat_jsonl())), purpose="batch").id
    bad = [
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "n_epochs"),
        ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size", "batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier",
         "positive"),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup", "unknown hyperparameter"),
        ({"training_file": "file-doesnotexist"}, "training_file", "file-doesnotexist"),
        ({"training_file": batch_file}, "training_file", "purpose 'fine-tune'"),
        ({"validation_file": "file-nope"}, "validation_file", "file-nope"),
        ({"model": "no-such-model"}, "model", "no-such-model"),
        ({"model": "all-minilm-l6-v2"}, "model", "causal-lm"),
        ({"suffix": "no spaces"}, "suffix", "suffix"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations", "integrations"),
        ({"method": {"type": "dpo"}}, "method.type", "supervised"),
        ({"extra_body": {"learning_rate": 1}}, "learning_rate", "unknown parameter"),
    ]
    for change, param, words in bad:
        args = {"model": BASE, "training_file": train, **change}
        with pytest.raises(openai.BadRequestError) as err:
            oai.fine_tuning.jobs.create(**args)
        body = err.value.body
        assert body["param"] == param and words in body["message"], (change, body)
        assert body["type"] == "invalid_request_error"
    assert len(client.get("/jobs?kind=finetune&limit=100", headers=auth(key)).get_json()["data"]) == before
