"""Batch requests: what comes in (envelope, task, documents) and what goes out (batch_public, file_public).

Documents are checked one by one in a plain loop (not a pydantic model per document) so that 100,000 of them
validate in well under a second and an error names the exact document: `documents.41.custom_id`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.errors import InvalidInput
from app.kinds.generate import GenerateParams, check_generate_params
from app.models import Batch, File
from app.schemas import (
    JobCreate,
    check_json,
    check_webhook_url,
    control_problem,
    iso,
    parse,
    unstorable,
    validation_error,
)
from app.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateTask(_Strict):
    type: Literal["generate"]
    template: str = Field("{text}", min_length=1, max_length=20_000)


class ClassifyTask(_Strict):
    """On a causal LM: zero-shot, the label most likely after the instruction (labels required). On a fine-tuned
    classifier: its own labels with probabilities (labels, if given, narrow them)."""

    type: Literal["classify"]
    labels: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(None, min_length=2,
                                                                                     max_length=64)
    instruction: str = Field("Classify the text.", max_length=2_000)

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v


class NerTask(_Strict):
    """Entities (type, text, start, end, score) of each document, from a fine-tuned token classifier."""

    type: Literal["ner"]


class ExtractTask(_Strict):
    type: Literal["extract"]
    fields: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1, max_length=32)

    @field_validator("fields")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("fields must be unique")
        return v


class EmbedTask(_Strict):
    type: Literal["embed"]
    normalize: bool = True


Task = Annotated[GenerateTask | ClassifyTask | ExtractTask | EmbedTask | NerTask, Field(discriminator="type")]


class _TaskHolder(_Strict):
    task: Task


class ExtractParams(_Strict):
    max_new_tokens: int = Field(32, ge=1, le=512)


class NoParams(_Strict):
    pass


TASK_PARAMS: dict[str, type[BaseModel]] = {
    "generate": GenerateParams, "extract": ExtractParams, "classify": NoParams, "embed": NoParams, "ner": NoParams,
}
TASK_MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "generate": ("causal-lm",), "classify": ("causal-lm", "classifier"), "extract": ("causal-lm",),
    "embed": ("embedding",), "ner": ("token-classifier",),
}


class BatchCreate(_Strict):
    input_file_id: str | None = Field(None, min_length=1, max_length=40)
    documents: list[Any] | None = None
    task: dict[str, Any]
    model: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    gpu: str | list[str] | None = None
    priority: int = Field(5, ge=0, le=9)
    metadata: dict[str, str] = Field(default_factory=dict)
    chunk_size: int | None = Field(None, ge=1, le=1024)
    webhook: str | None = Field(None, min_length=1, max_length=2048)


@dataclass
class Document:
    custom_id: str
    text: str
    extra: dict[str, Any] | None


@dataclass
class ValidatedBatch:
    envelope: BatchCreate
    task: dict[str, Any]
    params: dict[str, Any]
    template_fields: set[str] = field(default_factory=set)


KNOWN_FIELDS = {"text", "custom_id"}


# what a template may hold: {name} (a plain identifier), {{ and }} for literal braces; any other brace is an error
TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^\W\d]\w*)\}|\{[^{}]*\}?|\}")


def template_fields(template: str) -> set[str]:
    """The names a template uses. Templates are rendered by plain substitution, never str.format: a format spec
    (`{text:>1000000000}`), a conversion (`{text!r}`), attribute or index access (`{text.upper}`, `{0}`) or an
    unmatched brace is refused here, at submit."""
    names: set[str] = set()
    for m in TEMPLATE_TOKEN.finditer(template):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            continue
        if m.group(1) is None:
            shown = tok if len(tok) <= 40 else tok[:37] + "..."
            raise InvalidInput(f"task.template: use plain fields like {{text}} (and {{{{ or }}}} for a literal brace), "
                               f"not {shown}", field="task.template")
        names.add(m.group(1))
    return names


def validate_batch(body: Any, settings: Settings) -> ValidatedBatch:
    if isinstance(body, dict):  # the documents are checked one by one by check_documents
        check_json(body, skip=frozenset({"documents"}))
    env = parse(BatchCreate, body, check=False)
    try:  # gpu, model and metadata follow a job's rules
        JobCreate.model_validate({"kind": "batch", "model": env.model, "input": {}, "gpu": env.gpu,
                                  "metadata": env.metadata})
    except ValidationError as exc:
        raise validation_error(exc) from None
    if (env.input_file_id is None) == (env.documents is None):
        raise InvalidInput("give exactly one of input_file_id or documents", field="documents")
    if env.webhook is not None:
        check_webhook_url(env.webhook, settings, "webhook")
    try:
        task = _TaskHolder.model_validate({"task": env.task}).task
    except ValidationError as exc:
        err = validation_error(exc)
        for tag in TASK_PARAMS:  # pydantic names the union member in the path: task.classify.labels
            if err.field and err.field.startswith(f"task.{tag}"):
                err.field = "task" + err.field[len(f"task.{tag}"):]
                err.message = err.message.replace(f"task.{tag}", "task", 1)
        raise err from None
    params = parse(TASK_PARAMS[task.type], env.params, "params")
    check_generate_params(params, settings)
    fields = template_fields(task.template) if isinstance(task, GenerateTask) else set()
    return ValidatedBatch(env, task.model_dump(), params.model_dump(), fields)


def check_documents(docs: Iterable[tuple[str, Any]], spec: ValidatedBatch, settings: Settings) -> list[Document]:
    """Check every document (given with the path an error should name); duplicate ids, missing text and
    template fields no document carries are 422s up front. Per-document problems that only the model can see
    (too long for its context) fail that document alone, later."""
    out: list[Document] = []
    seen: dict[str, str] = {}
    extra_keys: set[str] = set()
    for where, doc in docs:
        if len(out) >= settings.max_batch_documents:
            raise InvalidInput(f"at most {settings.max_batch_documents} documents in one batch "
                               "(LLMOS_MAX_BATCH_DOCUMENTS)", field="documents")
        if not isinstance(doc, dict):
            raise InvalidInput(f"{where}: each document must be an object with custom_id and text", field=where)
        cid = doc.get("custom_id")
        if not isinstance(cid, str) or not 1 <= len(cid) <= 255:
            msg = "field required" if cid is None else "must be a string of 1 to 255 characters"
            raise InvalidInput(f"{where}.custom_id: {msg}", field=f"{where}.custom_id")
        why = control_problem(cid)
        if why:
            raise InvalidInput(f"{where}.custom_id: {why}", field=f"{where}.custom_id")
        if cid in seen:
            raise InvalidInput(f"{where}.custom_id: duplicate custom_id {cid!r} (first at {seen[cid]})",
                               field=f"{where}.custom_id", code="duplicate_custom_id")
        seen[cid] = where
        text = doc.get("text")
        if not isinstance(text, str):
            msg = "field required" if text is None else "must be a string"
            raise InvalidInput(f"{where}.text: {msg}", field=f"{where}.text")
        why = unstorable(text)
        if why:
            raise InvalidInput(f"{where}.text: {why}", field=f"{where}.text")
        extra = {k: v for k, v in doc.items() if k not in KNOWN_FIELDS}
        for k, v in extra.items():
            why = control_problem(k)
            if why:
                raise InvalidInput(f"{where}: a field name {why}", field=where)
            if not isinstance(v, (str, int, float, bool)) or (isinstance(v, float) and not math.isfinite(v)):
                raise InvalidInput(f"{where}.{k}: extra document fields must be strings or numbers",
                                   field=f"{where}.{k}")
            why = unstorable(v) if isinstance(v, str) else None
            if why:
                raise InvalidInput(f"{where}.{k}: {why}", field=f"{where}.{k}")
        extra_keys.update(extra)
        out.append(Document(cid, text, extra or None))
    if not out:
        raise InvalidInput("the batch has no documents", field="documents")
    unknown = sorted(spec.template_fields - KNOWN_FIELDS - extra_keys)
    if unknown:
        raise InvalidInput(f"task.template: unknown template field {{{unknown[0]}}}; documents carry "
                           f"{', '.join(sorted(KNOWN_FIELDS | extra_keys))}", field="task.template")
    return out


def inline_documents(documents: list[Any]) -> Iterator[tuple[str, Any]]:
    for i, doc in enumerate(documents):
        yield f"documents.{i}", doc


def jsonl_documents(lines: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """Lines of an uploaded JSONL file, read one at a time; blank lines are skipped."""
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"input_file_id: line {n} is not valid JSON: {exc}", field="input_file_id") from None
        yield f"input_file_id.line{n}", doc


# ---- what goes out -------------------------------------------------------------------------------------


def batch_public(b: Batch, base_url: str = "") -> dict[str, Any]:
    url = f"{base_url}/batches/{b.id}"
    done = b.completed + b.failed
    error = {"code": b.error_code, "message": b.error_message} if b.error_code else None
    return {
        "id": b.id,
        "object": "batch",
        "status": b.status.value,
        "task": b.task,
        "model": b.model,
        "params": b.params,
        "gpu": b.gpu,
        "queue": b.queue,
        "priority": b.priority,
        "metadata": b.metadata_ or {},
        "input_file_id": b.input_file_id,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "chunk_size": b.chunk_size,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "progress": {"done": done, "total": b.total, "fraction": round(done / b.total, 4) if b.total else 0.0},
        "error": error,
        "created_at": iso(b.created_at),
        "started_at": iso(b.started_at),
        "finished_at": iso(b.finished_at),
        "cancel_requested_at": iso(b.cancel_requested_at),
        "webhook": b.webhook,
        "urls": {"get": url, "cancel": f"{url}/cancel"},
    }


def file_public(f: File, base_url: str = "") -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "purpose": f.purpose,
        "filename": f.filename,
        "bytes": f.bytes,
        "sha256": f.sha256,
        "created_at": iso(f.created_at),
        "urls": {"get": f"{base_url}/files/{f.id}", "content": f"{base_url}/files/{f.id}/content"},
    }


# ---- what goes out, as schemas (app.api.openapi) ---------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestCounts(_Out):
    total: int
    completed: int
    failed: int


class BatchProgress(_Out):
    done: int
    total: int
    fraction: float


class BatchError(_Out):
    code: str
    message: str | None


class BatchPublic(_Out):
    id: str = Field(description="batch_…")
    object: Literal["batch"]
    status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
    task: dict[str, Any]
    model: str | None
    params: dict[str, Any]
    gpu: str | list[str] | None
    queue: str | None
    priority: int
    metadata: dict[str, str]
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    chunk_size: int | None
    request_counts: RequestCounts
    progress: BatchProgress
    error: BatchError | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    cancel_requested_at: str | None
    webhook: str | None
    urls: dict[str, str]


class FilePublic(_Out):
    id: str = Field(description="file_…")
    object: Literal["file"]
    purpose: str
    filename: str
    bytes: int
    sha256: str
    created_at: str | None
    urls: dict[str, str]


class FileUpload(BaseModel):
    """POST /files (multipart/form-data)."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    purpose: Literal["batch", "fine-tune", "assistants", "user_data", "evals"]
