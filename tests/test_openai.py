"""The /v1 surface driven by the official openai client against a live server."""

from __future__ import annotations

import io
import time

import openai
import pytest

from tests.conftest import make_key


def test_models_list_retrieve_and_errors(oai):
    models = oai.models.list()
    ids = {m.id for m in models}
    assert {"smollm2-135m-instruct", "tiny-random-llama", "all-minilm-l6-v2"} <= ids
    m = oai.models.retrieve("tiny-random-llama")
    assert m.object == "model" and m.owned_by == "system" and isinstance(m.created, int)
    with pytest.raises(openai.NotFoundError) as exc:
        oai.models.retrieve("no-such-model")
    assert exc.value.status_code == 404
    with pytest.raises(openai.PermissionDeniedError):
        oai.models.delete("tiny-random-llama")


def test_bad_key_is_an_authentication_error(live_api):
    client = openai.OpenAI(base_url=f"{live_api}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.models.list()
    body = exc.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error" and body["code"] == "invalid_api_key"


def test_files_create_retrieve_content_delete(oai):
    f = oai.files.create(file=("train.jsonl", io.BytesIO(b'{"prompt": "a", "completion": "b"}\n')),
                         purpose="fine-tune")
    assert f.id.startswith("file-") and f.object == "file" and f.bytes == 35 and isinstance(f.created_at, int)
    assert f.purpose == "fine-tune" and f.filename == "train.jsonl"
    assert oai.files.retrieve(f.id).id == f.id
    assert oai.files.content(f.id).content == b'{"prompt": "a", "completion": "b"}\n'
    deleted = oai.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError) as exc:
        oai.files.create(file=("x.bin", io.BytesIO(b"x")), purpose="nonsense")  # type: ignore[arg-type]
    assert exc.value.body["param"] == "purpose"


def test_files_auto_pagination_ends_with_every_item_once(oai, app):
    made = [oai.files.create(file=(f"f{i}.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id for i in range(25)]
    other = make_key(app, "mallory")  # someone else's file never shows up
    openai.OpenAI(base_url=str(oai.base_url), api_key=other, max_retries=0).files.create(
        file=("theirs.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    page = oai.files.list(limit=10)
    assert len(page.data) == 10 and page.has_more
    seen = [f.id for f in oai.files.list(limit=10)]  # the SDK follows `after` until has_more is false
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))
    asc = [f.id for f in oai.files.list(limit=7, order="asc")]
    assert sorted(asc) == sorted(made) and len(asc) == 25
    assert [f.id for f in oai.files.list(purpose="fine-tune")] == []


# ---- chat / completions / embeddings through the queue -------------------------------------------------


def _native_id(response_id: str) -> str:
    return "job_" + response_id.split("-", 1)[1]


@pytest.fixture
def worker(start_worker, pg, redis_url):
    return start_worker(pg, redis_url, "--gpu-type", "cpu", "--concurrency", "4")


def test_chat_sync_and_stream_give_the_same_text(oai, worker, client, key):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    sync = oai.chat.completions.create(model="tiny-random-llama", messages=messages, max_tokens=24, temperature=0,
                                       user="u-1", metadata={"team": "a"})
    assert sync.object == "chat.completion" and sync.id.startswith("chatcmpl-")
    assert sync.choices[0].message.role == "assistant" and sync.choices[0].finish_reason in ("stop", "length")
    text = sync.choices[0].message.content
    assert text
    u = sync.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    # it was a job of the core: high priority, visible in GET /jobs, with the request's user and metadata
    job = client.get(f"/jobs/{_native_id(sync.id)}", headers={"Authorization": f"Bearer {key}"}).get_json()
    assert job["kind"] == "generate" and job["priority"] == 9 and job["status"] == "succeeded"
    assert job["metadata"] == {"team": "a", "user": "u-1", "endpoint": "/v1/chat/completions"}

    chunks = list(oai.chat.completions.create(model="tiny-random-llama", messages=messages, max_tokens=24,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2, chunks
    assert "".join(content) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == sync.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens


def test_completions_n_stop_seed_and_streaming(oai, worker):
    one = oai.completions.create(model="tiny-random-llama", prompt="Once upon", max_tokens=16, temperature=0)
    assert one.object == "text_completion" and one.id.startswith("cmpl-") and one.choices[0].text
    streamed = "".join(c.choices[0].text for c in oai.completions.create(
        model="tiny-random-llama", prompt="Once upon", max_tokens=16, temperature=0, stream=True))
    assert streamed == one.choices[0].text
    many = oai.completions.create(model="tiny-random-llama", prompt="Once upon", max_tokens=8, temperature=1.0,
                                  seed=7, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    again = oai.completions.create(model="tiny-random-llama", prompt="Once upon", max_tokens=8, temperature=1.0,
                                   seed=7, n=3)
    assert [c.text for c in again.choices] == [c.text for c in many.choices]  # a seed makes it reproducible
    stop_at = one.choices[0].text[3:5]
    if stop_at.strip():
        cut = oai.completions.create(model="tiny-random-llama", prompt="Once upon", max_tokens=16, temperature=0,
                                     stop=[stop_at])
        assert stop_at not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"


def test_embeddings_float_and_base64(oai, worker):
    res = oai.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a dog", "stock prices"])
    assert res.object == "list" and [d.index for d in res.data] == [0, 1, 2]
    assert len(res.data[0].embedding) == 384 and res.usage.prompt_tokens > 0
    one = oai.embeddings.create(model="all-minilm-l6-v2", input="a cat", encoding_format="float")
    assert one.data[0].embedding == pytest.approx(res.data[0].embedding, abs=1e-5)
    b64 = oai.embeddings.create(model="all-minilm-l6-v2", input="a cat")  # the SDK asks for base64 and decodes it
    assert b64.data[0].embedding == pytest.approx(res.data[0].embedding, abs=1e-5)


def test_unsupported_and_bad_parameters_are_400s(oai):
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        dict(tools=[{"type": "function", "function": {"name": "f"}}]),
        dict(presence_penalty=0.5),
        dict(logprobs=True),
        dict(temperature=3),
        dict(max_tokens=10**6),
        dict(n=2, stream=True),
    ]
    params = []
    for extra in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            oai.chat.completions.create(model="tiny-random-llama", messages=msgs, **extra)
        assert exc.value.status_code == 400 and exc.value.body["type"] == "invalid_request_error"
        params.append(exc.value.body["param"])
    assert params == ["tools", "presence_penalty", "logprobs", "temperature", "max_completion_tokens", "n"]
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="tiny-random-llama", messages=msgs, extra_body={"frobnicate": 1})
    assert exc.value.body["param"] == "frobnicate" and exc.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="no-such-model", messages=msgs)
    assert exc.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="tiny-random-llama", input="x")  # a causal LM is no embedding model



def test_neutral_values_of_unsupported_parameters_are_accepted(app):
    from app.services.openai.completions import parse_call

    settings = app.extensions["llmos"].settings
    call = parse_call("/v1/chat/completions", {
        "model": "tiny-random-llama", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}]}],
        "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "response_format": {"type": "text"},
        "tools": [], "max_completion_tokens": 7, "stop": "x", "seed": 3}, settings)
    assert call.body["input"] == {"messages": [{"role": "system", "content": "a"}]}
    assert call.spec.params["max_new_tokens"] == 7 and call.spec.params["stop"] == ["x"]
    assert call.spec.params["seed"] == 3 and call.body["priority"] == 9


def test_a_client_that_goes_away_cancels_its_job(live_api, key, worker, client):
    import requests

    body = {"model": "tiny-random-llama", "prompt": "x", "max_tokens": 4096, "min_tokens": 4096,
            "temperature": 1.0, "stream": True}
    with requests.post(f"{live_api}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                       stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        job_id = r.headers["X-Request-Job"]
        got = 0
        for line in r.iter_lines():
            if line.startswith(b"data: {"):
                got += 1
                if got == 3:
                    break
    # the connection is closed: the server notices on its next write and cancels the job
    deadline = time.monotonic() + 60
    while True:
        job = client.get(f"/jobs/{job_id}?wait=10", headers={"Authorization": f"Bearer {key}"}).get_json()
        if job["status"] in ("cancelled", "succeeded", "failed") or time.monotonic() > deadline:
            break
    assert job["status"] == "cancelled", job
    assert job["usage"] is None or job["usage"].get("completion_tokens", 0) < 4096
    # what it had generated is kept
    assert job["output"]["finish_reason"] == "cancelled" and job["output"]["text"]
    assert 0 < job["output"]["completion_tokens"] < 4096
