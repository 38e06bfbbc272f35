"""The OpenAPI 3.1 document: served without a key, covers every route, its docs page has no outside assets, and
schemathesis finds no server error and no answer that contradicts it on the live server.

schemathesis runs a bounded number of examples per operation (SCHEMATHESIS_MAX_EXAMPLES, default 8) so the whole
file stays inside a couple of minutes on two cores; raise it locally to fuzz harder.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import Failure, FailureGroup

from app.services.files import UPLOAD_PURPOSES
from tests.conftest import auth, make_key

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8"))


def test_document_is_served_without_a_key_and_is_openapi_3_1(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.get_json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    import jsonschema_rs  # schemathesis' own validator

    for name, sub in doc["components"]["schemas"].items():  # each a valid JSON Schema 2020-12
        assert jsonschema_rs.meta.is_valid(sub), name
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"] and op["operationId"], (method, path)
            assert not [s for s in op["responses"] if s.startswith("5") and s not in ("503", "504")], (method, path)


def test_every_route_is_in_the_document_and_described(app, client):
    from app.api.openapi import UNDOCUMENTED, openapi_path, operations

    doc = client.get("/openapi.json").get_json()
    described = operations()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED or rule.endpoint.startswith("openapi"):
            continue
        path, _ = openapi_path(rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"].get(path, {}), (method, path)
            assert (path, method.lower()) in described, f"{method} {path} has no entry in app.api.openapi.operations"
    # both surfaces, each with its own error shape
    assert "/jobs" in doc["paths"] and "/v1/chat/completions" in doc["paths"]
    assert doc["paths"]["/jobs"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert doc["paths"]["/v1/files"]["get"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"}
    # POST /jobs: one variant per public kind, each with that kind's own input schema
    body = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    sub = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"echo", "generate", "embed", "finetune"} <= set(sub["discriminator"]["mapping"])
    assert "/healthz" in doc["paths"] and "security" not in doc["paths"]["/healthz"]["get"]
    assert doc["paths"]["/jobs"]["get"]["security"] == [{"bearer": []}]


def test_upload_purposes_in_the_document_are_the_services(client):
    doc = client.get("/openapi.json").get_json()
    schema = doc["paths"]["/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert tuple(schema["properties"]["purpose"]["enum"]) == UPLOAD_PURPOSES


def test_docs_page_is_served_from_the_package(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert "/openapi.json" in page
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert srcs and all(s.startswith("/docs/assets/") for s in srcs), srcs  # no CDN, nothing outside
    for src in srcs:
        asset = client.get(src)
        assert asset.status_code == 200 and len(asset.data) > 1000, src
    assert client.get("/docs/assets/../../app/settings.py").status_code == 404
    assert client.get("/docs/assets/nope.js").mimetype == "application/json"


def test_responses_agree_with_the_document(client, key):
    """A few real answers (a job, a batch, a file, lists, errors) validated against the document's schemas."""
    import jsonschema_rs

    doc = client.get("/openapi.json").get_json()

    def check(path: str, method: str, r: Any) -> None:
        spec = doc["paths"][path][method]["responses"][str(r.status_code)]
        schema = spec["content"]["application/json"]["schema"]
        jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]}).validate(r.get_json())

    h = auth(key)
    r = client.post("/jobs", json={"kind": "echo", "input": {"a": 1}, "metadata": {"k": "v"}}, headers=h)
    check("/jobs", "post", r)
    job_id = r.get_json()["id"]
    check("/jobs", "get", client.get("/jobs", headers=h))
    check("/jobs/{job_id}", "get", client.get(f"/jobs/{job_id}", headers=h))
    check("/jobs/{job_id}/events", "get", client.get(f"/jobs/{job_id}/events", headers=h))
    check("/jobs/{job_id}/cancel", "post", client.post(f"/jobs/{job_id}/cancel", headers=h))
    check("/jobs", "post", client.post("/jobs", json={"kind": "nope", "input": {}}, headers=h))
    check("/kinds", "get", client.get("/kinds", headers=h))
    check("/models", "get", client.get("/models", headers=h))
    check("/workers", "get", client.get("/workers", headers=h))
    check("/v1/models", "get", client.get("/v1/models", headers=h))
    check("/v1/files", "get", client.get("/v1/files?limit=0", headers=h))
    import io

    up = client.post("/files", data={"file": (io.BytesIO(b'{"custom_id":"a","text":"x"}\n'), "d.jsonl"),
                                     "purpose": "batch"}, headers=h, content_type="multipart/form-data")
    check("/files", "post", up)
    r = client.post("/batches", json={"input_file_id": up.get_json()["id"], "model": "tiny-random-llama",
                                      "task": {"type": "generate"}}, headers=h)
    check("/batches", "post", r)
    check("/batches/{batch_id}", "get", client.get(f"/batches/{r.get_json()['id']}", headers=h))


# ---- schemathesis against the live server --------------------------------------------------------------


@pytest.fixture
def fuzz_key(app) -> str:
    """A key with every scope but admin and a request rate the fuzzer does not trip."""
    from app.services import auth as auth_service

    with app.extensions["llmos"].db.session() as s:
        try:
            return auth_service.create_key(session=s, owner_name="fuzzer", rate_limit="100000/minute")
        except TypeError:  # before per-key rate limits
            return make_key(app, "fuzzer")


# positive_data_acceptance expects every schema-valid request to succeed; here a valid-looking request still
# meets checks a schema cannot state (the model or file it names must exist and be yours, a cursor must be one
# the API gave out), answered 422 by design. Everything else runs: no 5xx, documented status codes, content
# types, headers and bodies, and schema-violating requests refused (negative_data_rejection).
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


def _curl(case: Any, base_url: str) -> str:
    try:
        return case.as_curl_command(headers={"Authorization": "Bearer …"})
    except Exception:  # noqa: BLE001
        return f"{case.method} {case.formatted_path}"


def fuzz(op: Any, mode: Any, base_url: str, headers: dict[str, str]) -> list[str]:
    """Up to MAX_EXAMPLES requests to one operation; each failing check, with the request that shows it."""
    from hypothesis import given

    found: list[str] = []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        try:
            case.call_and_validate(base_url=base_url, headers=headers, timeout=30, excluded_checks=EXCLUDED)
        except (FailureGroup, Failure, AssertionError) as exc:  # collect one per operation and mode
            if not found:
                found.append(f"{op.label} [{mode.value}]: {exc!s:.2000}\n{_curl(case, base_url)}")

    with contextlib.suppress(Unsatisfiable):  # nothing to generate in this mode (no parameters to break)
        run()
    return found


def test_schemathesis_finds_no_server_error_and_no_contradiction(live_api, fuzz_key):
    """Every operation, positive and negative examples: no 5xx, status codes, content types, headers and
    bodies as documented, and schema-violating requests refused."""
    doc = requests.get(f"{live_api}/openapi.json", timeout=30).json()
    api = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    ops = [r.ok() for r in api.get_all_operations()]
    assert len(ops) >= 50
    for op in ops:
        for mode in schemathesis.GenerationMode:
            failures += fuzz(op, mode, live_api, auth(fuzz_key))
    for f in failures:
        print(f, end="\n\n")
    assert not failures, f"{len(failures)} operations failed checks (printed above); first: {failures[0]}"
