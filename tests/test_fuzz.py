"""Every input is answered with a JSON 4xx, never a 500 or an HTML page, and nothing bad is stored: batch templates,
control characters / NUL / lone surrogates in any string, odd JSON, odd paths and methods, failed uploads and
oversize request lines and headers (gunicorn's own answers).

Each family is one test (or one parametrized test); the requests are the ones a fuzzer found or their relatives.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from app.models import Batch, File, Job
from tests.conftest import ROOT, auth, free_port, make_key, worker_env

TINY = "tiny-random-llama"
JOB = {"kind": "generate", "model": TINY, "input": {"prompt": "hi"}}


def count(app: Any, model: type) -> int:
    with app.extensions["llmos"].db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def assert_json_error(r: Any, status: int | tuple[int, ...], code: str | None = None,
                      field: str | None = None) -> dict[str, Any]:
    text = r.get_data(as_text=True)
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, text)
    assert r.mimetype == "application/json", text
    assert "Traceback" not in text and "<html" not in text.lower()
    err = r.get_json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert err.get("field", err.get("param")) == field, err
    return err


def raw_post(client: Any, key: str, path: str, raw: str | bytes, **headers: str) -> Any:
    return client.post(path, data=raw, headers={**auth(key), "Content-Type": "application/json", **headers})


def batch_body(template: str = "{text}", documents: list[dict] | None = None, **over: Any) -> dict[str, Any]:
    body = {"documents": documents or [{"custom_id": "a", "text": "hello"}], "model": TINY,
            "task": {"type": "generate", "template": template}, "params": {"max_new_tokens": 4}}
    body.update(over)
    return body


# ---- batch templates: a plain substitution ----------------------------------------------------------------


@pytest.mark.parametrize("template", [
    "{text:>1000000000}", "{text:{text}}", "{text!r}", "{text!s:>10}", "{text.__class__}", "{text[0]}", "{0}",
    "{}", "{text", "text}", "{ text }", "{text.upper.__globals__}",
])
def test_template_with_more_than_plain_fields_is_422_at_submit(client, app, key, template):
    r = client.post("/batches", json=batch_body(template), headers=auth(key))
    assert_json_error(r, 422, "invalid_input", "task.template")
    assert count(app, Batch) == 0 and count(app, Job) == 0


def test_template_plain_fields_and_escaped_braces_are_accepted(client, key):
    body = batch_body("{{json}}: {text} ({custom_id}) by {author}",
                      [{"custom_id": "a", "text": "hello", "author": "ann"}])
    assert client.post("/batches", json=body, headers=auth(key)).status_code == 202


def test_render_is_a_bounded_plain_substitution():
    from workers.errors import JobFailure
    from workers.kinds.batch import _render

    item = (0, "id-1", "hello", {"n": 3, "who": "{text}"})
    assert _render("{{x}} {text} {custom_id} {n} {who}", item) == "{x} hello id-1 3 {text}"  # no re-expansion
    with pytest.raises(JobFailure, match="missing"):
        _render("{nope}", item)
    for bad in ("{text:>1000000000}", "{text!r}", "{text.upper}", "{0}", "{", "}"):
        with pytest.raises(JobFailure):
            _render(bad, item)
    big = (0, "id", "x" * 1000, None)
    with pytest.raises(JobFailure, match="over 5000 characters"):
        _render("{text}" * 10, big, limit=5000)
    t0 = time.monotonic()
    with pytest.raises(JobFailure):  # refused after the limit, not after building gigabytes
        _render("{text}" * 3000, (0, "id", "x" * 10_000_000, None))
    assert time.monotonic() - t0 < 2


# ---- NUL, lone surrogates and control characters in any string ------------------------------------------

SURROGATE = '"\\ud800"'  # as JSON text: a lone high surrogate escape
NUL = '"a\\u0000b"'


def _job_with(where: str, value: str) -> str:
    """A job body (as JSON text) with the raw JSON string `value` placed at `where`."""
    bodies = {
        "metadata_value": f'{{"kind":"echo","input":{{}},"metadata":{{"k":{value}}}}}',
        "metadata_key": f'{{"kind":"echo","input":{{}},"metadata":{{{value}:"v"}}}}',
        "prompt": f'{{"kind":"generate","model":"{TINY}","input":{{"prompt":{value}}}}}',
        "message": (f'{{"kind":"generate","model":"{TINY}",'
                    f'"input":{{"messages":[{{"role":"user","content":{value}}}]}}}}'),
        "echo_deep": f'{{"kind":"echo","input":{{"a":[{{"b":{value}}}]}}}}',
        "model": f'{{"kind":"generate","model":{value},"input":{{"prompt":"hi"}}}}',
        "stop": f'{{"kind":"generate","model":"{TINY}","input":{{"prompt":"hi"}},"params":{{"stop":[{value}]}}}}',
    }
    return bodies[where]


FIELDS = {"metadata_value": "metadata.k", "metadata_key": "metadata", "prompt": "input.prompt",
          "message": "input.messages.0.content", "echo_deep": "input.a.0.b", "model": "model",
          "stop": "params.stop.0"}


@pytest.mark.parametrize("value", [SURROGATE, NUL, '"\\udfff"', '"x\\ud800\\u0041"'], ids=["high", "nul", "low", "mid"])
@pytest.mark.parametrize("where", list(FIELDS))
def test_nul_and_lone_surrogates_in_a_job_are_422_and_never_stored(client, app, key, where, value):
    r = raw_post(client, key, "/jobs", _job_with(where, value))
    assert_json_error(r, 422, "invalid_input", FIELDS[where])
    assert count(app, Job) == 0
    # the table still answers JSON queries (a stored surrogate used to break them all)
    assert client.get("/jobs?limit=5", headers=auth(key)).status_code == 200


def test_lone_surrogate_as_raw_utf8_bytes_is_422(client, app, key):
    raw = b'{"kind":"echo","input":{},"metadata":{"k":"\xed\xa0\x80"}}'  # CESU-8 of U+D800
    assert_json_error(raw_post(client, key, "/jobs", raw), 422, "invalid_input", "metadata.k")
    assert count(app, Job) == 0


def test_a_surrogate_pair_is_an_ordinary_character(client, key):
    pair = '"\\ud83d\\ude00"'
    r = raw_post(client, key, "/jobs", f'{{"kind":"echo","input":{{"t":{pair}}},"metadata":{{"e":{pair}}}}}')
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["input"] == {"t": "\U0001F600"}


@pytest.mark.parametrize("value", ["a\x01b", "tab\there", "new\nline", "del\x7f", "c1\x85"])
def test_control_characters_in_metadata_and_model_are_422(client, app, key, value):
    r = client.post("/jobs", json={"kind": "echo", "input": {}, "metadata": {"k": value}}, headers=auth(key))
    assert_json_error(r, 422, "invalid_input", "metadata")
    r = client.post("/jobs", json={**JOB, "model": f"m{value}"}, headers=auth(key))
    assert_json_error(r, 422, "invalid_input", "model")
    assert count(app, Job) == 0


def test_free_text_keeps_tabs_and_newlines(client, key):
    r = client.post("/jobs", json={**JOB, "input": {"prompt": "a\tb\nc\r\n\x0cd"}}, headers=auth(key))
    assert r.status_code == 202, r.get_json()


@pytest.mark.parametrize("doc,field", [
    ({"custom_id": "a\ud800", "text": "x"}, "documents.0.custom_id"),
    ({"custom_id": "a\x00", "text": "x"}, "documents.0.custom_id"),
    ({"custom_id": "a\nb", "text": "x"}, "documents.0.custom_id"),
    ({"custom_id": "a", "text": "x\ud800"}, "documents.0.text"),
    ({"custom_id": "a", "text": "x\x00"}, "documents.0.text"),
    ({"custom_id": "a", "text": "x", "extra": "\udc00"}, "documents.0.extra"),
    ({"custom_id": "a", "text": "x", "n": float("nan")}, "documents.0.n"),
])
def test_bad_characters_in_batch_documents_are_422(client, app, key, doc, field):
    body = json.dumps(batch_body(documents=[doc]))  # json.dumps writes NaN and escapes the surrogates
    assert_json_error(raw_post(client, key, "/batches", body), 422, "invalid_input", field)
    assert count(app, Batch) == 0


def test_bad_characters_in_batch_metadata_are_422(client, app, key):
    r = raw_post(client, key, "/batches", json.dumps(batch_body(metadata={"k": "\ud800"})))
    assert_json_error(r, 422, "invalid_input", "metadata.k")
    r = client.post("/batches", json=batch_body(metadata={"k": "a\x02"}), headers=auth(key))
    assert_json_error(r, 422, "invalid_input", "metadata")
    assert count(app, Batch) == 0


def test_openai_surface_refuses_them_in_its_own_shape(client, app, key):
    body = json.dumps({"model": TINY, "messages": [{"role": "user", "content": "hi\ud800"}]})
    r = raw_post(client, key, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.mimetype == "application/json"
    err = r.get_json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "messages.0.content", err
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "metadata": {"k": "\x00"}}
    r = raw_post(client, key, "/v1/chat/completions", json.dumps(body))
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "metadata.k"
    assert count(app, Job) == 0


@pytest.mark.parametrize("headers", [{"Idempotency-Key": "a\x01b"}, {"X-Anything": "a\x1fb"}])
def test_control_characters_in_headers_are_400(client, app, key, headers):
    r = client.post("/jobs", json=JOB, headers={**auth(key), **headers})
    assert_json_error(r, 400, "bad_request")
    assert count(app, Job) == 0


@pytest.mark.parametrize("query", ["status=%00", "cursor=a%01b", "%00=1"])
def test_bad_characters_in_the_query_are_4xx(client, key, query):
    assert_json_error(client.get(f"/jobs?{query}", headers=auth(key)), (400, 422))


def test_broken_utf8_in_the_query_reads_as_a_replacement_character(client, key):
    r = client.get("/jobs?kind=%ED%A0%80&model=%FF", headers=auth(key))  # decoded as U+FFFD: no such jobs
    assert r.status_code == 200 and r.get_json()["data"] == []


def test_nul_in_the_path_is_400(client, key):
    assert_json_error(client.get("/jobs/job_%00x", headers=auth(key)), 400)


# ---- empty, huge, deeply nested and wrongly typed JSON ---------------------------------------------------


@pytest.mark.parametrize("raw,status", [
    ("", 400), ("   ", 400), ("{", 400), ("nul", 400), ("{'kind': 'echo'}", 400), ("\xff", 400),
    ("null", 422), ("[]", 422), ('"job"', 422), ("1", 422), ("true", 422), ("{}", 422),
    ('{"kind":"echo","input":{},"priority":"high"}', 422), ('{"kind":"echo","input":[]}', 422),
    ('{"kind":["echo"],"input":{}}', 422), ('{"kind":"echo","input":{},"metadata":{"k":1}}', 422),
    ('{"kind":"echo","input":{},"priority":1e999}', 422), ('{"kind":"echo","input":{"x":NaN}}', 422),
    ('{"kind":"echo","input":{"x":-Infinity}}', 422), ('{"kind":"echo","input":{"x":1e999}}', 422),
    ('{"kind":"echo","input":{},"timeout_s":' + "9" * 5000 + "}", 400),
    ('{"kind":"echo","input":{},"params":{"sleep_s":true}}', 202),  # true is 1.0 to pydantic's lax mode
])
def test_odd_json_bodies_are_json_4xx(client, app, key, raw, status):
    r = raw_post(client, key, "/jobs", raw.encode("latin-1") if raw == "\xff" else raw)
    if status == 202:
        assert r.status_code == 202
        return
    assert_json_error(r, status)
    assert count(app, Job) == 0


def test_deeply_nested_json_is_refused(client, app, key):
    nested = '{"a":' * 100 + "1" + "}" * 100
    r = raw_post(client, key, "/jobs", '{"kind":"echo","input":' + nested + "}")
    assert_json_error(r, 422, "invalid_input")
    deep = "[" * 200_000 + "]" * 200_000  # deeper than the JSON parser goes: 400, not a crash
    assert_json_error(raw_post(client, key, "/jobs", deep), (400, 413))
    assert count(app, Job) == 0


def test_huge_body_is_413(client, app, key):
    raw = json.dumps({"kind": "echo", "input": {"x": "a" * 2_000_000}})
    assert_json_error(raw_post(client, key, "/jobs", raw), 413, "payload_too_large")
    assert count(app, Job) == 0


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_415(client, key, ctype):
    r = client.post("/jobs", data=json.dumps(JOB), headers={**auth(key), "Content-Type": ctype})
    assert_json_error(r, (415, 400))


# ---- odd paths and methods -------------------------------------------------------------------------------

ODD = [("POST", "/jobs//cancel", 404), ("GET", "/jobs//events", 404), ("GET", "//jobs", 404),
       ("GET", "/jobs/", 404), ("GET", "/nope", 404), ("GET", "/jobs/x/cancel", 405), ("PATCH", "/jobs", 405),
       ("DELETE", "/jobs/x", 405), ("PUT", "/healthz", 405), ("GET", "/files//content", 404),
       ("POST", "/batches//cancel", 404), ("GET", "/%ff%fe", 404), ("GET", "/jobs/%2e%2e/%2e%2e/etc", 404),
       ("GET", "/v1//models", 404), ("GET", "/v1/nope", 404), ("BREW", "/jobs", 405)]


@pytest.mark.parametrize("method,path,status", ODD)
def test_odd_paths_and_methods_are_json(client, key, method, path, status):
    r = client.open(path, method=method, headers=auth(key))
    assert_json_error(r, status)
    if status == 405:
        assert r.headers.get("Allow")


def test_odd_paths_over_http_are_json(live_api, key):
    for method, path, status in ODD:
        r = requests.request(method, live_api + path, headers=auth(key), timeout=10)
        if path == "//jobs":  # an HTTP server may read "//jobs" as an authority-form target: any JSON answer
            assert r.status_code in (200, 404)
        else:
            assert r.status_code == status, (method, path, r.status_code, r.text[:200])
            assert "error" in r.json()
        assert r.headers["Content-Type"].startswith("application/json"), (path, r.text[:200])


# ---- uploads that fail leave nothing on disk ----------------------------------------------------------


def files_on_disk(app: Any) -> list[Path]:
    d = app.extensions["llmos"].settings.files_dir
    return sorted(d.iterdir()) if d.exists() else []


def post_file(client: Any, key: str, data: bytes, name: str = "docs.jsonl", purpose: str = "batch",
              path: str = "/files") -> Any:
    return client.post(path, data={"file": (io.BytesIO(data), name), "purpose": purpose},
                       headers=auth(key), content_type="multipart/form-data")


@pytest.mark.parametrize("path", ["/files", "/v1/files"])
@pytest.mark.parametrize("name", ["a\x00b.jsonl", "a\x01.jsonl", "line\nbreak.jsonl", "x" * 300 + ".jsonl"])
def test_upload_with_a_bad_filename_is_4xx_and_leaves_nothing(make_app, pg, redis_url, path, name):
    app = make_app(database_url=pg, broker_url=redis_url)
    client, key = app.test_client(), make_key(app, "alice")
    r = post_file(client, key, b'{"custom_id":"a","text":"x"}\n', name=name, path=path)
    assert 400 <= r.status_code < 500 and r.mimetype == "application/json", r.get_data(as_text=True)
    assert files_on_disk(app) == [] and count(app, File) == 0


@pytest.mark.parametrize("path", ["/files", "/v1/files"])
def test_upload_too_big_or_bad_purpose_leaves_nothing(make_app, pg, redis_url, path):
    app = make_app(database_url=pg, broker_url=redis_url, max_file_bytes=10_000)
    client, key = app.test_client(), make_key(app, "alice")
    assert post_file(client, key, b"x" * 10_001, path=path).status_code in (400, 413)
    assert post_file(client, key, b"x" * 100_000, path=path).status_code in (400, 413)
    assert post_file(client, key, b"{}", purpose="nonsense", path=path).status_code in (400, 422)
    assert post_file(client, key, b"{}", purpose="", path=path).status_code in (400, 422)
    assert files_on_disk(app) == [] and count(app, File) == 0
    assert post_file(client, key, b"x" * 10_000, path=path).status_code in (200, 201)
    assert len(files_on_disk(app)) == 1


def test_upload_whose_transaction_fails_leaves_nothing(make_app, pg, redis_url, monkeypatch):
    import app.api.files as files_api

    app = make_app(database_url=pg, broker_url=redis_url)
    app.testing = False  # answer the failure as a client would see it
    client, key = app.test_client(), make_key(app, "alice")

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("after the bytes were written, before the commit")

    monkeypatch.setattr(files_api, "file_public", broken)
    r = post_file(client, key, b'{"custom_id":"a","text":"x"}\n')
    assert r.status_code == 500 and r.mimetype == "application/json"
    assert files_on_disk(app) == [] and count(app, File) == 0


# ---- oversize request lines and headers: gunicorn's own answers in JSON ------------------------------------


@pytest.fixture
def gunicorn_api(pg, redis_url, tmp_path):
    port = free_port()
    env = worker_env(pg, redis_url, tmp_path / "data")
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread",
                             "--threads", "4", "--bind", f"127.0.0.1:{port}", "--no-control-socket",
                             "app:create_app()"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            pytest.fail((tmp_path / "gunicorn.log").read_text()[-3000:])
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


GUNICORN_CASES = [
    (b"GET /jobs?x=" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (414,)),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", (400, 431)),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", (431,)),
    (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", (400,)),
    (b"\x00\x01\x02 / HTTP/1.1\r\n\r\n", (400,)),
]


def test_gunicorn_answers_oversize_and_malformed_requests_in_json(gunicorn_api):
    for request_bytes, statuses in GUNICORN_CASES:
        got, headers, body = _raw_http(gunicorn_api, request_bytes)
        assert got in statuses, (request_bytes[:40], got, body[:300])
        assert headers["content-type"] == "application/json", body[:300]
        assert json.loads(body)["error"]["code"] in ("uri_too_long", "headers_too_large", "bad_request")
    # and the app behind it still answers
    assert requests.get(f"http://127.0.0.1:{gunicorn_api}/healthz", timeout=10).status_code == 200


def test_gunicorn_error_answer_is_a_complete_json_response():
    from app import gunicorn_json

    raw = gunicorn_json.json_error(414, "URI Too Long", "")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 URI Too Long") and json.loads(body)["error"]["code"] == "uri_too_long"
    assert f"Content-Length: {len(body)}".encode() in head
