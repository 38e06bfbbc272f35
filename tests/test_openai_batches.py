"""/v1/batches with the official openai client: OpenAI's Batch JSONL in, its output and error files out."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import openai
import pytest

TINY = "tiny-random-llama"


def _line(cid: str, body: dict, url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def _upload(oai, lines: list) -> str:
    raw = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    return oai.files.create(file=("batch.jsonl", io.BytesIO(raw.encode())), purpose="batch").id


def _wait(oai, batch_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        b = oai.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled", "expired") or time.monotonic() > deadline:
            return b
        time.sleep(0.3)


def _jsonl(oai, file_id: str) -> list[dict]:
    return [json.loads(x) for x in oai.files.content(file_id).text.splitlines() if x.strip()]


@pytest.fixture
def worker(start_worker, pg, redis_url):
    return start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "2")


def test_chat_batch_to_completion_with_bad_lines_reported(oai, worker):
    msgs = [{"role": "user", "content": "Say hi"}]
    good = [_line(f"ok-{i}", {"model": TINY, "messages": msgs, "max_tokens": 6 + i, "temperature": 0})
            for i in range(5)]
    lines = [*good,
             "{not json",
             _line("bad-param", {"model": TINY, "messages": msgs, "logit_bias": {"1": 5}}),
             _line("bad-url", {"model": TINY, "messages": msgs}, url="/v1/embeddings"),
             _line("ok-0", {"model": TINY, "messages": msgs}),  # a duplicate custom_id
             _line("other-model", {"model": "smollm2-135m-instruct", "messages": msgs})]
    b = oai.batches.create(input_file_id=_upload(oai, lines), endpoint="/v1/chat/completions",
                           completion_window="24h", metadata={"run": "1"})
    assert b.object == "batch" and b.status in ("validating", "in_progress") and b.endpoint == "/v1/chat/completions"
    assert isinstance(b.created_at, int) and b.expires_at == b.created_at + 24 * 3600 and b.metadata == {"run": "1"}
    b = _wait(oai, b.id)
    assert b.status == "completed", b
    assert b.request_counts.total == 10 and b.request_counts.completed == 5 and b.request_counts.failed == 5
    assert b.completed_at and b.finalizing_at and b.in_progress_at and b.output_file_id.startswith("file-")

    out = _jsonl(oai, b.output_file_id)
    assert sorted(x["custom_id"] for x in out) == [f"ok-{i}" for i in range(5)]
    for x in out:
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200 and x["response"]["request_id"]
        body = x["response"]["body"]
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == TINY
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert 0 < body["usage"]["completion_tokens"] <= 6 + int(x["custom_id"][3:])
    # a line's answer in a batch is the answer the same request gets on its own (temperature 0)
    sync = oai.chat.completions.create(model=TINY, messages=msgs, max_tokens=6, temperature=0)
    first = next(x for x in out if x["custom_id"] == "ok-0")
    assert first["response"]["body"]["choices"][0]["message"]["content"] == sync.choices[0].message.content

    errors = {x["custom_id"]: x for x in _jsonl(oai, b.error_file_id)}
    assert set(errors) == {"line-6", "bad-param", "bad-url", "ok-0", "other-model"}
    for x in errors.values():
        assert x["response"]["status_code"] == 400 and x["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert errors["bad-param"]["response"]["body"]["error"]["param"] == "logit_bias"
    assert "not valid JSON" in errors["line-6"]["response"]["body"]["error"]["message"]
    assert errors["ok-0"]["response"]["body"]["error"]["code"] == "duplicate_custom_id"
    assert errors["other-model"]["response"]["body"]["error"]["code"] == "model_mismatch"

    assert b.id in [x.id for x in oai.batches.list()]


def test_embeddings_batch(oai, worker):
    lines = [_line(f"e{i}", {"model": "all-minilm-l6-v2", "input": [f"text {i}", "more"]}, url="/v1/embeddings")
             for i in range(3)]
    b = oai.batches.create(input_file_id=_upload(oai, lines), endpoint="/v1/embeddings", completion_window="24h")
    b = _wait(oai, b.id)
    assert b.status == "completed" and b.request_counts.completed == 3 and b.error_file_id is None
    out = _jsonl(oai, b.output_file_id)
    direct = oai.embeddings.create(model="all-minilm-l6-v2", input=["text 0", "more"], encoding_format="float")
    e0 = next(x for x in out if x["custom_id"] == "e0")["response"]["body"]
    assert e0["object"] == "list" and len(e0["data"]) == 2
    assert e0["data"][0]["embedding"] == pytest.approx(direct.data[0].embedding, abs=1e-5)


def test_every_line_bad_and_envelope_errors(oai):
    fid = _upload(oai, [_line("a", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})])
    b = oai.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and b.request_counts.failed == 1 and b.failed_at
    [err] = _jsonl(oai, b.error_file_id)
    assert err["response"]["status_code"] == 404 and err["response"]["body"]["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        oai.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    assert exc.value.body["param"] == "completion_window"
    with pytest.raises(openai.NotFoundError):
        oai.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        oai.batches.retrieve("batch_nope")


def test_cancel_and_expire_without_a_worker(oai, app):
    from app.services.openai import batches

    msgs = [{"role": "user", "content": "x"}]
    fid = _upload(oai, [_line(f"r{i}", {"model": TINY, "messages": msgs}) for i in range(3)])
    b = oai.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    c = oai.batches.cancel(b.id)
    assert c.status == "cancelled" and c.cancelled_at and c.cancelling_at
    errs = _jsonl(oai, c.error_file_id)
    assert {x["error"]["code"] for x in errs} == {"batch_cancelled"} and len(errs) == 3

    e = oai.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    p = app.extensions["llmos"]
    from app.models import utcnow

    assert batches.expire_overdue(db=p.db, settings=p.settings) == 0  # not yet
    assert batches.expire_overdue(db=p.db, settings=p.settings, now=utcnow() + timedelta(hours=25)) == 1
    e = oai.batches.retrieve(e.id)
    assert e.status == "expired" and e.expired_at
    assert {x["error"]["code"] for x in _jsonl(oai, e.error_file_id)} == {"batch_expired"}
