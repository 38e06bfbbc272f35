"""The OpenAPI 3.1 document (GET /openapi.json) and its docs page (GET /docs), generated from the app itself.

Why a small generator and not spectree or apispec: the request and response shapes are already pydantic models
(app.schemas, app.batch_schemas, the kinds' declarations in app/kinds, app.services.openai), and pydantic v2 writes
JSON Schema 2020-12, the dialect OpenAPI 3.1 uses, so `models_json_schema` gives the components as they are.
spectree would validate requests a second time in its own decorators (flask-restful resources already parse
through app.schemas.parse, whose 422s name the field); apispec's pydantic support is a third-party plugin over a
marshmallow-first core. The paths come from the app's URL map, so a route added later is in the document (with a
generic entry until it is described in OPERATIONS) and tests/test_openapi.py fails if one is missing.

The docs page is Swagger UI from the `flask-swagger-ui` package (its files ship inside the wheel; no CDN).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from flask import Flask, Response, current_app, jsonify, send_from_directory
from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model
from pydantic.json_schema import models_json_schema

from app.api.queues import QueuePublic
from app.batch_schemas import BatchCreate, BatchPublic, FilePublic, FileUpload
from app.jobs import kinds
from app.schemas import (
    CheckpointPublic,
    DeliveryPublic,
    ErrorBody,
    EventPublic,
    Health,
    JobCreate,
    JobPublic,
    KindPublic,
    ModelPublic,
    WebhookDefault,
    WebhookDefaultPublic,
    WebhookSecretPublic,
    WebhookSecretRotated,
    WorkerEntry,
)
from app.services.openai.batches import BatchRequest
from app.services.openai.completions import ChatRequest, CompletionRequest, EmbeddingRequest

TITLE = "LLM OS"
UNDOCUMENTED = {"static", "openapi_json", "openapi_docs", "openapi_docs_asset",
                "ui.index", "ui.index_slash", "ui.asset"}  # the dashboard's page and files (app.api.ui)

# ---- /v1 shapes: what the official `openai` client reads (extra fields allowed, as OpenAI adds them) ----------


class _V1(BaseModel):
    model_config = ConfigDict(extra="allow")


class OpenAIErrorDetail(_V1):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(_V1):
    error: OpenAIErrorDetail


class V1Model(_V1):
    id: str
    object: Literal["model"]
    created: int | None
    owned_by: str


class V1File(_V1):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int | None
    filename: str
    purpose: str
    status: str | None = None


class V1RequestCounts(_V1):
    total: int
    completed: int
    failed: int


class V1Batch(_V1):
    id: str
    object: Literal["batch"]
    endpoint: str | None
    input_file_id: str | None
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int | None
    request_counts: V1RequestCounts
    metadata: dict[str, str] | None


class V1FineTuningJob(_V1):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int | None
    finished_at: int | None
    model: str | None
    fine_tuned_model: str | None
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    training_file: str | None
    validation_file: str | None
    hyperparameters: dict[str, Any]


class V1FineTuningEvent(_V1):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int | None
    level: Literal["info", "warn", "error"]
    message: str
    type: str | None
    data: dict[str, Any] | None


class V1Checkpoint(_V1):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int | None
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class V1Deleted(_V1):
    id: str
    object: str
    deleted: bool


class V1ChatMessage(_V1):
    role: str
    content: str | None


class V1ChatChoice(_V1):
    index: int
    message: V1ChatMessage
    finish_reason: str | None


class V1Usage(_V1):
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class V1ChatCompletion(_V1):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[V1ChatChoice]
    usage: V1Usage | None = None


class V1CompletionChoice(_V1):
    index: int
    text: str
    finish_reason: str | None


class V1Completion(_V1):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[V1CompletionChoice]
    usage: V1Usage | None = None


class V1Embedding(_V1):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class V1Embeddings(_V1):
    object: Literal["list"]
    model: str
    data: list[V1Embedding]
    usage: V1Usage | None = None


class V1FineTuningCreate(BaseModel):
    """POST /v1/fine_tuning/jobs, as OpenAI's client sends it."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    hyperparameters: dict[str, Any] | None = Field(
        None, description="n_epochs, batch_size, learning_rate_multiplier (a number or 'auto')")
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = Field(None, description="{type: 'supervised', supervised: {hyperparameters}}")
    integrations: list[Any] | None = Field(None, description="not supported: leave out or empty")


class KeyCreate(BaseModel):
    """POST /keys (admin keys): a new API key; the secret is in the answer once."""

    model_config = ConfigDict(extra="forbid")
    owner: str = Field(min_length=1, max_length=200)
    name: str | None = Field(None, max_length=200)
    scopes: list[str] | str | None = None
    rate_limit: str | None = Field(None, description="N/second, N/minute, N/hour or N/day")
    expires_in_days: float | None = None


class AnyObject(RootModel[dict[str, Any]]):
    """A JSON object."""


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["ready", "not_ready"]
    checks: dict[str, Any] = Field(description="database, broker, migrations: {ok, error?} each")


# ---- operations ------------------------------------------------------------------------------------------

Body = type[BaseModel] | None


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str = ""
    where: Literal["query", "header"] = "query"


@dataclass(frozen=True)
class Op:
    summary: str
    out: Body = None
    status: int = 200
    body: Body = None
    params: tuple[Param, ...] = ()
    list_of: bool = False  # `out` is an item of a list ({data, next_cursor} or OpenAI's list on /v1)
    media: str = "application/json"  # the success answer's media type
    multipart: bool = False  # the body is multipart/form-data
    extra_statuses: tuple[int, ...] = ()
    tag: str = ""
    description: str = ""
    public: bool = False  # no key needed
    also: tuple[int, ...] = ()  # other statuses answered with the `out` schema (/readyz's 503)


LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size (default 20)")
CURSOR = Param("cursor", {"type": "string"}, "next_cursor of the previous page")
PAGE = (LIMIT, CURSOR)
AFTER = Param("after", {"type": "string"}, "the last id of the previous page")
V1_LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size")
ORDER = Param("order", {"type": "string", "enum": ["", "asc", "desc"]}, "by creation (empty or absent: desc)")
IDEMPOTENCY = Param("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255},
                    "the same key and body return the same job; another body is a 409", where="header")
STATUS = Param("status", {"type": "string", "enum": ["", "queued", "running", "cancelling", "succeeded", "failed",
                                                     "cancelled"]}, "only this status (empty or absent: any)")


def job_create_schema() -> type[BaseModel]:
    """POST /jobs: the envelope (JobCreate) with each public kind's own input and params, one variant per kind."""
    variants: list[Any] = []
    for k in kinds.all_kinds():
        if not k.public:
            continue
        model_field: Any = (str, Field(min_length=1, max_length=200)) if k.model_kind is not None \
            else (None, Field(None, description=f"{k.name} jobs use no model"))
        kind_field: Any = (Literal[k.name], ...)
        variant = create_model(
            f"JobCreate_{k.name}", __base__=JobCreate, __doc__=f"A {k.name} job: {k.description}",
            kind=kind_field, model=model_field, input=(k.input, ...), params=(k.params, Field(default_factory=dict)),
        )
        variants.append(variant)
    if not variants:
        return JobCreate
    union: Any = variants[0]
    for v in variants[1:]:
        union = union | v

    class JobSubmission(RootModel[Annotated[union, Field(discriminator="kind")]]):
        """POST /jobs: the envelope with the kind's own input and params (one variant per kind)."""

    return JobSubmission


def operations() -> dict[tuple[str, str], Op]:
    """(OpenAPI path, method) -> what it takes and answers. A route missing here gets a generic entry."""
    job_create = job_create_schema()
    jobs_q = (*PAGE, STATUS, Param("kind", {"type": "string"}), Param("model", {"type": "string"}),
              Param("batch_id", {"type": "string"}))
    return {
        ("/healthz", "get"): Op("Liveness: the API and its database answer", Health, tag="ops", public=True),
        ("/readyz", "get"): Op("Readiness: database, broker, migrations at head", Readiness, tag="ops",
                               public=True, also=(503,)),
        ("/metrics", "get"): Op("Prometheus metrics (Bearer LLMOS_METRICS_TOKEN when set)", None,
                                media="text/plain", tag="ops", public=True),
        ("/jobs", "post"): Op("Submit a job", JobPublic, 202, job_create, (IDEMPOTENCY,), tag="jobs",
                              description="Accepted jobs are in the database before the answer is sent."),
        ("/jobs", "get"): Op("List jobs, newest first", JobPublic, params=jobs_q, list_of=True, tag="jobs"),
        ("/jobs/{job_id}", "get"): Op(
            "Get a job (long-poll with ?wait=N seconds)", JobPublic, tag="jobs",
            params=(Param("wait", {"type": "number", "minimum": 0, "maximum": 60},
                          "seconds to wait for the job to end (LLMOS_MAX_WAIT_S at most)"),)),
        ("/jobs/{job_id}/cancel", "post"): Op("Cancel a job (queued: never runs; running: stops between steps)",
                                              JobPublic, tag="jobs"),
        ("/jobs/{job_id}/events", "get"): Op("A job's timeline, oldest first", EventPublic, params=PAGE,
                                             list_of=True, tag="jobs"),
        ("/jobs/{job_id}/checkpoints", "get"): Op("A fine-tuning job's checkpoints", CheckpointPublic,
                                                  params=PAGE, list_of=True, tag="jobs"),
        ("/jobs/{job_id}/webhook-deliveries", "get"): Op("A job's webhook deliveries", DeliveryPublic, params=PAGE,
                                                         list_of=True, tag="webhooks"),
        ("/webhook-deliveries/{delivery_id}/redeliver", "post"): Op("Send a delivery again", DeliveryPublic, 202,
                                                                    tag="webhooks"),
        ("/webhooks/default", "get"): Op("The webhook for jobs that name none", WebhookDefaultPublic,
                                         tag="webhooks"),
        ("/webhooks/default", "put"): Op("Set (or, with url null, clear) the default webhook", WebhookDefaultPublic,
                                         body=WebhookDefault, tag="webhooks"),
        ("/webhooks/secret", "get"): Op("The webhook signing secret", WebhookSecretPublic, tag="webhooks"),
        ("/webhooks/secret/rotate", "post"): Op("Rotate the signing secret (the old one is valid for a while)",
                                                WebhookSecretRotated, tag="webhooks"),
        ("/files", "post"): Op("Upload a file (multipart: file, purpose)", FilePublic, 201, FileUpload,
                               multipart=True, tag="files"),
        ("/files", "get"): Op("List files", FilePublic, params=(*PAGE, Param("purpose", {"type": "string"})),
                              list_of=True, tag="files"),
        ("/files/{file_id}", "get"): Op("A file's metadata", FilePublic, tag="files"),
        ("/files/{file_id}", "delete"): Op("Delete a file", None, tag="files"),
        ("/files/{file_id}/content", "get"): Op("A file's bytes", None, media="application/octet-stream",
                                                tag="files"),
        ("/batches", "post"): Op("Submit a batch: one task over many documents", BatchPublic, 202, BatchCreate,
                                 tag="batches"),
        ("/batches", "get"): Op("List batches", BatchPublic, params=(*PAGE, STATUS), list_of=True, tag="batches"),
        ("/batches/{batch_id}", "get"): Op("A batch's progress", BatchPublic, tag="batches"),
        ("/batches/{batch_id}/cancel", "post"): Op("Cancel a batch (running chunks finish)", BatchPublic,
                                                   tag="batches"),
        ("/models", "get"): Op("Models this key may use", ModelPublic, list_of=True, tag="models"),
        ("/models/{name}", "get"): Op("A model", ModelPublic, tag="models"),
        ("/models/{name}", "delete"): Op("Delete a fine-tuned model of yours", None, tag="models"),
        ("/workers", "get"): Op("Workers (admin keys) or capacity by GPU type (other keys)", WorkerEntry,
                                list_of=True, tag="ops"),
        ("/queues", "get"): Op("Queues: jobs waiting, the oldest one's age, jobs running and live workers, per queue",
                               QueuePublic, list_of=True, tag="ops"),
        ("/kinds", "get"): Op("Job kinds and their JSON schemas", KindPublic, list_of=True, tag="jobs"),
        ("/keys", "get"): Op("API keys (admin keys only; never the secret)", AnyObject,
                             params=(Param("owner", {"type": "string"}),), list_of=True, tag="keys"),
        ("/keys", "post"): Op("Create an API key (admin keys only); the secret is shown once", AnyObject, 201,
                              KeyCreate, tag="keys"),
        ("/keys/{key_id}/revoke", "post"): Op("Revoke an API key (admin keys only)", AnyObject, tag="keys"),
        # ---- /v1: OpenAI's API -------------------------------------------------------------------------
        ("/v1/models", "get"): Op("List models", V1Model, list_of=True, tag="openai"),
        ("/v1/models/{name}", "get"): Op("Retrieve a model", V1Model, tag="openai"),
        ("/v1/models/{name}", "delete"): Op("Delete a fine-tuned model", V1Deleted, tag="openai"),
        ("/v1/files", "post"): Op("Upload a file", V1File, 200, FileUpload, multipart=True, tag="openai"),
        ("/v1/files", "get"): Op("List files", V1File, params=(AFTER, Param("limit", {"type": "integer",
                                 "minimum": 1, "maximum": 10000}), ORDER, Param("purpose", {"type": "string"})),
                                 list_of=True, tag="openai"),
        ("/v1/files/{file_id}", "get"): Op("Retrieve a file", V1File, tag="openai"),
        ("/v1/files/{file_id}", "delete"): Op("Delete a file", V1Deleted, tag="openai"),
        ("/v1/files/{file_id}/content", "get"): Op("A file's content", None, media="application/octet-stream",
                                                   tag="openai"),
        ("/v1/batches", "post"): Op("Create a batch from an uploaded Batch JSONL file", V1Batch, 200, BatchRequest,
                                    tag="openai"),
        ("/v1/batches", "get"): Op("List batches", V1Batch, params=(AFTER, V1_LIMIT), list_of=True, tag="openai"),
        ("/v1/batches/{batch_id}", "get"): Op("Retrieve a batch", V1Batch, tag="openai"),
        ("/v1/batches/{batch_id}/cancel", "post"): Op("Cancel a batch", V1Batch, tag="openai"),
        ("/v1/fine_tuning/jobs", "post"): Op("Create a fine-tuning job", V1FineTuningJob, 200, V1FineTuningCreate,
                                             (IDEMPOTENCY,), tag="openai"),
        ("/v1/fine_tuning/jobs", "get"): Op("List fine-tuning jobs", V1FineTuningJob, params=(AFTER, V1_LIMIT),
                                            list_of=True, tag="openai"),
        ("/v1/fine_tuning/jobs/{job_id}", "get"): Op("Retrieve a fine-tuning job", V1FineTuningJob, tag="openai"),
        ("/v1/fine_tuning/jobs/{job_id}/cancel", "post"): Op("Cancel a fine-tuning job", V1FineTuningJob,
                                                             tag="openai"),
        ("/v1/fine_tuning/jobs/{job_id}/events", "get"): Op("A fine-tuning job's events, newest first",
                                                            V1FineTuningEvent, params=(AFTER, V1_LIMIT),
                                                            list_of=True, tag="openai"),
        ("/v1/fine_tuning/jobs/{job_id}/checkpoints", "get"): Op("A fine-tuning job's checkpoints", V1Checkpoint,
                                                                 params=(AFTER, V1_LIMIT), list_of=True,
                                                                 tag="openai"),
        ("/v1/chat/completions", "post"): Op("Chat completion (stream: true answers server-sent events)",
                                             V1ChatCompletion, body=ChatRequest, extra_statuses=(504,),
                                             tag="openai"),
        ("/v1/completions", "post"): Op("Text completion (stream: true answers server-sent events)", V1Completion,
                                        body=CompletionRequest, extra_statuses=(504,), tag="openai"),
        ("/v1/embeddings", "post"): Op("Embeddings", V1Embeddings, body=EmbeddingRequest, extra_statuses=(504,),
                                       tag="openai"),
    }


# ---- the document ----------------------------------------------------------------------------------------

NATIVE_ERRORS = {400: "Malformed request: not JSON, a NUL or control character in the URL or a header",
                 401: "No key, or not a live one", 403: "The key lacks the scope this needs",
                 404: "No such thing (of this key's owner)", 409: "Conflicts with the current state",
                 413: "Body or file over the limit", 415: "The body is not JSON (or not multipart for uploads)",
                 422: "Invalid input; error.field names it", 429: "Rate limit or quota; see Retry-After",
                 503: "The database or broker is unavailable; try again"}
V1_ERRORS = {400: "Invalid request (OpenAI's invalid_request_error; 413/415/422 are folded into 400)",
             401: "Invalid API key", 403: "Permission error", 404: "Not found", 409: "Conflict",
             429: "Rate limit", 503: "Unavailable", 504: "The job did not end in time"}
_CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")


def openapi_path(rule: str) -> tuple[str, list[tuple[str, str]]]:
    """werkzeug's `/jobs/<string:job_id>` -> `/jobs/{job_id}`, with each parameter's converter."""
    params = [(name, conv or "string") for conv, name in _CONVERTER.findall(rule)]
    return _CONVERTER.sub(lambda m: "{" + m.group(2) + "}", rule), params


def _path_param(name: str, converter: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"} if converter == "int" else {"type": "string", "minLength": 1}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _list_schema(item: dict[str, Any], v1: bool) -> dict[str, Any]:
    if v1:
        return {"type": "object", "required": ["object", "data", "has_more"],
                "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item},
                               "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]},
                               "has_more": {"type": "boolean"}}}
    return {"type": "object", "required": ["data", "next_cursor"],
            "properties": {"data": {"type": "array", "items": item},
                           "next_cursor": {"type": ["string", "null"]}}}


def _generic(method: str) -> Op:
    return Op(f"{method.upper()} (not described yet)", AnyObject)


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `app`."""
    ops = operations()
    models: set[tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
        (ErrorBody, "serialization"), (OpenAIError, "serialization")}
    entries: list[tuple[str, str, list[tuple[str, str]], Op, bool]] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint in UNDOCUMENTED or rule.endpoint.startswith("openapi"):
            continue
        path, params = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            m = method.lower()
            op = ops.get((path, m)) or _generic(m)
            entries.append((path, m, params, op, (path, m) in ops))
            if op.out is not None:
                models.add((op.out, "serialization"))
            if op.body is not None and not op.multipart:
                models.add((op.body, "validation"))
    ordered = sorted(models, key=lambda mm: (mm[0].__name__, mm[1]))
    keys, top = models_json_schema(ordered, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top.get("$defs", {})
    ref = {pair: keys[pair] for pair in ordered}

    paths: dict[str, dict[str, Any]] = {}
    for path, method, params, op, described in entries:
        v1 = path == "/v1" or path.startswith("/v1/")
        public = op.public
        operation: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(method, path),
                                     "tags": [op.tag or ("openai" if v1 else "other")]}
        if op.description:
            operation["description"] = op.description
        parameters = [_path_param(n, c) for n, c in params]
        for p in op.params:
            spec: dict[str, Any] = {"name": p.name, "in": p.where, "required": False, "schema": p.schema}
            if p.description:
                spec["description"] = p.description
            parameters.append(spec)
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            if op.multipart:
                body_schema = op.body.model_json_schema()
                operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                    "schema": body_schema, "encoding": {"file": {"contentType": "application/octet-stream"}}}}}
            else:
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": ref[(op.body, "validation")]}}}
        responses: dict[str, Any] = {}
        if op.out is not None and op.media == "application/json":
            item = ref[(op.out, "serialization")]
            content: dict[str, Any] = {"application/json": {
                "schema": _list_schema(item, v1) if op.list_of else item}}
            if op.body in (ChatRequest, CompletionRequest):
                content["text/event-stream"] = {"schema": {"type": "string"},
                                                "description": "with stream: true, chunks ending in data: [DONE]"}
            responses[str(op.status)] = {"description": "OK", "content": content}
        elif op.media == "text/plain":
            responses[str(op.status)] = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
        elif op.media != "application/json":
            responses[str(op.status)] = {"description": "OK", "content": {
                op.media: {"schema": {"type": "string", "format": "binary"}},
                "application/jsonl": {"schema": {"type": "string"}}}}
        else:
            responses[str(op.status)] = {"description": "OK", "content": {"application/json": {
                "schema": {"type": "object"}}}}
        if not described:
            responses["default"] = {"description": "any answer (this route is not described yet)",
                                    "content": {"application/json": {"schema": {}}}}
        error_ref = {"$ref": "#/components/schemas/" + ("OpenAIError" if v1 else "ErrorBody")}
        for status, text in (V1_ERRORS if v1 else NATIVE_ERRORS).items():
            if status == 504 and 504 not in op.extra_statuses:
                continue
            if public and status == 403:
                continue
            if status in op.also:
                responses[str(status)] = {"description": text, "content": responses[str(op.status)]["content"]}
                continue
            responses[str(status)] = {"description": text, "content": {"application/json": {"schema": error_ref}}}
        if status_429 := responses.get("429"):
            status_429["headers"] = {"Retry-After": {"schema": {"type": "string"},
                                                     "description": "seconds to wait"}}
        operation["responses"] = responses
        if not public:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": _version(),
                 "description": "Native job API (/jobs, /batches, /files, /models, /webhooks, /keys, /workers) "
                                "and OpenAI's API under /v1. Errors: {\"error\": {\"code\", \"message\", "
                                "\"field\"}} natively, OpenAI's {\"error\": {\"message\", \"type\", \"param\", "
                                "\"code\"}} under /v1."},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an LLM OS API key: llmos_…"}}},
    }


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).strip("/").replace("/", "_").replace("-", "_") or "root"
    return f"{method}_{words}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmos")
    except PackageNotFoundError:
        return "0.0.0"


# ---- serving -------------------------------------------------------------------------------------------

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>LLM OS API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                                 presets: [SwaggerUIBundle.presets.apis]});
  </script>
</body>
</html>
"""
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js")


def swagger_ui_dir() -> Path | None:
    """Swagger UI's files as the flask-swagger-ui package ships them (None when it is not installed)."""
    try:
        root = resources.files("flask_swagger_ui") / "dist"
    except ModuleNotFoundError:
        return None
    path = Path(str(root))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def document(app: Flask) -> dict[str, Any]:
    """The document, built once per app (the URL map does not change after start)."""
    doc = app.extensions.get("llmos.openapi")
    if doc is None:
        doc = app.extensions["llmos.openapi"] = build(app)
    return doc


def register(app: Flask) -> None:
    """GET /openapi.json, GET /docs and the docs page's assets; no key needed."""

    def openapi_json() -> Response:
        resp = jsonify(document(current_app))
        resp.headers["Cache-Control"] = "public, max-age=300"
        return resp

    def openapi_docs() -> Response:
        return Response(DOCS_PAGE, mimetype="text/html")

    def openapi_docs_asset(name: str) -> Response:
        from app.errors import NotFound

        where = swagger_ui_dir()
        if name not in ASSETS or where is None:
            raise NotFound(f"no docs asset {name!r}")
        return send_from_directory(where, name, max_age=86400)

    app.add_url_rule("/openapi.json", "openapi_json", openapi_json, methods=["GET"])
    app.add_url_rule("/docs", "openapi_docs", openapi_docs, methods=["GET"])
    app.add_url_rule("/docs/assets/<string:name>", "openapi_docs_asset", openapi_docs_asset, methods=["GET"])


__all__ = ["build", "document", "operations", "register"]
