"""/v1/chat/completions, /v1/completions and /v1/embeddings: OpenAI's request bodies as native job specs
(`generate` and `embed` jobs of the core), and the core's results as OpenAI's objects and stream chunks.

The same translation serves a synchronous request and a line of an OpenAI batch file. A parameter the platform
does not support is a 400 naming it, never silently ignored; a neutral value of one (`presence_penalty: 0`,
`logprobs: false`, `response_format: {"type": "text"}`) is accepted.
"""

from __future__ import annotations

import base64
import json
import queue
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.db import Database
from app.errors import ApiError, InvalidInput, NotFound, Unavailable
from app.jobs.signals import Streams, Waiters
from app.jobs.states import TERMINAL
from app.models import Job
from app.schemas import ValidatedJob, validate_job, validation_error
from app.services import jobs
from app.services.openai.common import to_v1, ts
from app.settings import Settings

INTERACTIVE_PRIORITY = 9  # a client is waiting on the line: ahead of batch work
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
ID_PREFIX = {"/v1/chat/completions": "chatcmpl-", "/v1/completions": "cmpl-", "/v1/embeddings": "embd-"}

# parameters accepted only with a value that asks for nothing the platform lacks
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0), "logprobs": (None, False),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "response_format": (None, {"type": "text"}),
    "store": (None, False), "service_tier": (None, "auto", "default"), "parallel_tool_calls": (None,),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "modalities": (None, ["text"]), "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1),
    "dimensions": (None,), "prediction": (None,), "audio": (None,), "reasoning_effort": (None,),
    "web_search_options": (None,),
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `name` and the like carry nothing a prompt uses
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1, max_length=200)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    n: int | None = Field(None, ge=1, le=16)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0)
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = Field(None, max_length=256)


REQUESTS: dict[str, type[_Body]] = {"/v1/chat/completions": ChatRequest, "/v1/completions": CompletionRequest,
                                    "/v1/embeddings": EmbeddingRequest}

# a native field in an error -> the OpenAI parameter the client sent
_PARAMS = {"params.max_new_tokens": "max_tokens", "params.min_new_tokens": "min_tokens", "params.n": "n",
           "params.temperature": "temperature", "params.top_p": "top_p", "params.top_k": "top_k",
           "params.stop": "stop", "params.seed": "seed", "input.messages": "messages", "input.prompt": "prompt",
           "input.texts": "input", "input.text": "input", "model": "model", "metadata": "metadata"}


@dataclass
class Call:
    """A validated /v1 request: the native job it becomes and how to answer it."""

    endpoint: str
    model: str
    body: dict[str, Any]  # the native job body (what POST /jobs would take)
    spec: ValidatedJob
    stream: bool = False
    include_usage: bool = False
    encoding_format: str = "float"
    extra: dict[str, Any] = field(default_factory=dict)


def _openai_param(native: str | None, endpoint: str) -> str | None:
    if native is None:
        return None
    for prefix, name in sorted(_PARAMS.items(), key=lambda kv: -len(kv[0])):
        if native == prefix or native.startswith(prefix + "."):
            if name == "max_tokens" and endpoint == "/v1/chat/completions":
                name = "max_completion_tokens"
            return name + native[len(prefix):]
    return native


def parse_call(endpoint: str, body: Any, settings: Settings) -> Call:
    """An OpenAI request body (a synchronous request or a batch line's body) as a native job: 400s name the
    OpenAI parameter."""
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    for name, value in body.items():
        if name in NEUTRAL:
            if value not in NEUTRAL[name]:
                raise InvalidInput(f"{name}={json.dumps(value)[:60]} is not supported by this server; leave it out",
                                   field=name, code="unsupported_parameter")
        elif name not in REQUESTS[endpoint].model_fields:
            raise InvalidInput(f"unsupported parameter: {name!r}", field=name, code="unsupported_parameter")
    body = {k: v for k, v in body.items() if k not in NEUTRAL}
    try:
        req = REQUESTS[endpoint].model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if isinstance(req, EmbeddingRequest):
        texts = [req.input] if isinstance(req.input, str) else req.input
        native: dict[str, Any] = {"kind": "embed", "model": req.model, "input": {"texts": texts},
                                  "params": {"normalize": True}, "priority": INTERACTIVE_PRIORITY,
                                  "metadata": _metadata(endpoint, req.user, None)}
        return Call(endpoint, req.model, native, _validate(native, settings, endpoint),
                    encoding_format=req.encoding_format)
    assert isinstance(req, _Sampling)
    if isinstance(req, ChatRequest):
        inp: dict[str, Any] = {"messages": [
            {"role": "system" if m.role == "developer" else m.role,
             "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
            for m in req.messages]}
        max_new = req.max_completion_tokens or req.max_tokens
    else:
        assert isinstance(req, CompletionRequest)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise InvalidInput("prompt: one prompt per request (send a batch for many)", field="prompt",
                               code="unsupported_parameter")
        inp = {"prompt": prompts[0]}
        max_new = req.max_tokens
    params: dict[str, Any] = {"stream": bool(req.stream)}
    for native_name, value in (("max_new_tokens", max_new), ("min_new_tokens", req.min_tokens),
                               ("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k),
                               ("n", req.n), ("stop", req.stop), ("seed", req.seed)):
        if value is not None:
            params[native_name] = value
    native = {"kind": "generate", "model": req.model, "input": inp, "params": params,
              "priority": INTERACTIVE_PRIORITY, "metadata": _metadata(endpoint, req.user, req.metadata)}
    if req.stream_options is not None and not req.stream:
        raise InvalidInput("stream_options: only with stream: true", field="stream_options")
    return Call(endpoint, req.model, native, _validate(native, settings, endpoint), stream=bool(req.stream),
                include_usage=bool(req.stream_options and req.stream_options.include_usage))


def _metadata(endpoint: str, user: str | None, metadata: dict[str, str] | None) -> dict[str, str]:
    out = dict(metadata or {})
    if user:
        out["user"] = user
    out["endpoint"] = endpoint
    return out


def _validate(native: dict[str, Any], settings: Settings, endpoint: str) -> ValidatedJob:
    try:
        return validate_job(native, settings)
    except ApiError as exc:
        param = _openai_param(exc.field, endpoint)
        if exc.field and param != exc.field:
            exc.message = exc.message.replace(exc.field, param or "", 1)
        exc.field = param
        raise


# ---- running it: wait for the job, or stream it -----------------------------------------------------------


def job_error(job: Job) -> ApiError:
    """A job that did not succeed, as the error its synchronous request answers with."""
    code, message = job.error_code or "internal", job.error_message or "the job failed"
    if code == "invalid_input":
        return InvalidInput(message)
    if code == "model_not_found":
        return NotFound(message, code="model_not_found")
    if code == "cancelled":
        return ApiError(message, code="cancelled", status=409)
    if code == "timeout":
        return ApiError(message, code="timeout", status=504)
    return ApiError(message, code=code, status=500)


def wait(*, db: Database, waiters: Waiters, owner_id: int, job: Job) -> Job:
    """The job once it has ended (its time limit bounds the wait: the scheduler fails it past that)."""
    deadline = time.monotonic() + job.timeout_s + 60
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable("the job did not end in time; see GET /jobs/" + job.id, code="timeout")
        job, _ = jobs.wait_for_job(db=db, waiters=waiters, owner_id=owner_id, job_id=job.id,
                                   wait_s=min(left, 30.0), bounded=False)  # the request is the wait
        if job.status in TERMINAL:
            return job


def _usage(usage: dict[str, Any] | None, *, embeddings: bool = False) -> dict[str, int]:
    u = usage or {}
    prompt = int(u.get("prompt_tokens", 0))
    if embeddings:
        return {"prompt_tokens": prompt, "total_tokens": prompt}
    completion = int(u.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response_id(endpoint: str, job_id: str) -> str:
    return to_v1(job_id, ID_PREFIX[endpoint])


def answer(call: Call, job: Job) -> dict[str, Any]:
    """The OpenAI object for a succeeded job (chat.completion, text_completion, or a list of embeddings)."""
    return result_body(call.endpoint, job.id, ts(job.created_at) or 0, call.model, job.output or {}, job.usage,
                       call.encoding_format)


def result_body(endpoint: str, job_id: str, created: int, model: str, output: dict[str, Any],
                usage: dict[str, Any] | None, encoding_format: str = "float") -> dict[str, Any]:
    if endpoint == "/v1/embeddings":
        vectors = output.get("embeddings") or [output.get("embedding") or []]
        return {"object": "list", "model": model, "usage": _usage(usage, embeddings=True),
                "data": [{"object": "embedding", "index": i, "embedding": _encode(v, encoding_format)}
                         for i, v in enumerate(vectors)]}
    choices = output.get("choices") or [{"text": output.get("text", ""),
                                         "finish_reason": output.get("finish_reason", "stop")}]
    if endpoint == "/v1/chat/completions":
        return {"id": response_id(endpoint, job_id), "object": "chat.completion", "created": created,
                "model": model, "system_fingerprint": None, "usage": _usage(usage),
                "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"], "refusal": None},
                             "finish_reason": c["finish_reason"], "logprobs": None} for i, c in enumerate(choices)]}
    return {"id": response_id(endpoint, job_id), "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None, "usage": _usage(usage),
            "choices": [{"index": i, "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None}
                        for i, c in enumerate(choices)]}


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def stream(*, call: Call, job: Job, db: Database, streams: Streams, live: bool, owner_id: int,
           publish: Callable[[], object]) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format for a streaming job, ending with `data: [DONE]`. Text
    arrives from the worker as it is generated; whatever a lost message left out is filled in from the job's
    final output. A client that goes away (the server closes this generator) cancels the job."""
    chat = call.endpoint == "/v1/chat/completions"
    rid, created = response_id(call.endpoint, job.id), ts(job.created_at) or 0

    def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            d: dict[str, Any] = {}
            if role:
                d["role"] = "assistant"
            if delta is not None:
                d["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        body = {"id": rid, "object": obj, "created": created, "model": call.model, "system_fingerprint": None,
                "choices": [choice]}
        if call.include_usage:
            body["usage"] = None
        return _sse(body)

    ended = False
    try:
        with streams.watch(job.id) as pieces:
            publish()  # after the watch: the first piece cannot be missed
            if chat:
                yield chunk("", role=True)
            sent = ""
            while True:
                try:
                    item = pieces.get(timeout=2.0 if live else 0.2)
                except queue.Empty:
                    item = None
                if item is not None:
                    offset, text = item
                    if offset <= len(sent) < offset + len(text):
                        new = text[len(sent) - offset:]
                        sent += new
                        yield chunk(new)
                    continue
                with db.session() as session:
                    job = jobs.get_job(session=session, owner_id=owner_id, job_id=job.id)
                if job.status in TERMINAL:
                    break
                yield ": keep-alive\n\n"  # also how a client that went away is noticed while nothing is generated
            ended = True
        if job.status.value != "succeeded":
            err = job_error(job)
            yield _sse({"error": {"message": err.message, "type": "server_error" if err.status >= 500
                                  else "invalid_request_error", "param": None, "code": err.code}})
            return
        output = job.output or {}
        final = str(output.get("text", ""))
        if final.startswith(sent) and len(final) > len(sent):
            yield chunk(final[len(sent):])
        yield chunk(None, finish=str(output.get("finish_reason", "stop")))
        if call.include_usage:
            yield _sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": created, "model": call.model, "system_fingerprint": None, "choices": [],
                        "usage": _usage(job.usage)})
        yield "data: [DONE]\n\n"
    except GeneratorExit:
        if not ended:  # the client went away mid-stream: nobody wants the rest
            with db.session() as session:
                jobs.cancel_job(session=session, owner_id=owner_id, job_id=job.id)
        raise


# ---- batch output lines ------------------------------------------------------------------------------------

SERVER_SIDE = ("internal", "timeout", "worker_lost", "unavailable")


def batch_line(custom_id: str, status: str, output: Any, code: str | None, message: str | None,
               extra: dict[str, Any] | None, *, expired: bool = False) -> dict[str, Any]:
    """One line of an OpenAI batch's output or error file: the response a synchronous request would have had
    (its status code and body), or, for a request the batch never ran, `error` with OpenAI's code for why."""
    line: dict[str, Any] = {"id": "batch_req_" + secrets.token_hex(12), "custom_id": custom_id, "response": None,
                            "error": None}
    if status == "succeeded":
        line["response"] = {"status_code": 200, "request_id": secrets.token_hex(16), "body": output}
    elif status == "cancelled":
        line["error"] = ({"code": "batch_expired", "message": "the batch expired before this request ran"}
                         if expired else {"code": "batch_cancelled", "message": "the batch was cancelled before "
                                                                                "this request ran"})
    else:
        http = 500 if code in SERVER_SIDE else 404 if code == "model_not_found" else 400
        line["response"] = {"status_code": http, "request_id": secrets.token_hex(16), "body": {"error": {
            "message": message or "", "type": "server_error" if http >= 500 else "invalid_request_error",
            "param": (extra or {}).get("param"), "code": code}}}
    return line
