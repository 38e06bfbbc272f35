"""The /v1 surface driven by the official openai client against a live server."""

from __future__ import annotations

import io

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
