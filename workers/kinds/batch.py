"""batch: one chunk job runs a chunk of a batch's documents through the model together.

generate and extract hand every request of the chunk to the engine at once, so they share forward passes;
classify scores every (document, label) pair in padded batches, or on a fine-tuned classifier runs the chunk
through its engine (as ner does on a token classifier); embed embeds the chunk in padded batches.
A document that cannot run (template field missing, too long for the model) fails alone with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch
from sqlalchemy.orm import Session

from app.jobs import lifecycle
from app.services import batches
from app.services.batches import ChunkWork, ItemResult
from app.services.openai import completions
from workers import kinds
from workers.engines.embedding import EmbeddingEngine
from workers.engines.encoder import EncoderEngine
from workers.engines.generation import GenerationEngine, GenRequest
from workers.errors import JobFailure
from workers.kinds import JobContext, Outcome
from workers.model_cache import LoadedModel, ModelSpec
from workers.runtime import WorkerRuntime

log = logging.getLogger("llmos.worker")

Item = tuple[int, str, str, dict[str, Any] | None]


def run(ctx: JobContext, rt: WorkerRuntime) -> Outcome:
    """A chunk job: every document of the chunk through the model together. The documents' results commit with
    the chunk job's outcome (compare-and-set each); a worker that stops mid-chunk hands the chunk back with
    what it finished stored, and the next attempt runs only the rest."""
    assert ctx.batch_id is not None
    seq = int(ctx.input["seq"])
    with rt.platform.db.session() as session:
        work = batches.chunk_work(session=session, batch_id=ctx.batch_id, seq=seq)
    if work is None:
        raise JobFailure("invalid_input", f"batch {ctx.batch_id} no longer exists")
    try:
        results = process(work, ctx.model, rt, ctx.cancel)
    except Exception as exc:  # the model would not load, or a crash: every document of the chunk fails alone
        code, message = ((exc.code, exc.message) if isinstance(exc, JobFailure)
                         else ("internal", f"internal error ({exc.__class__.__name__})"))
        if not isinstance(exc, JobFailure):
            log.exception("batch=%s chunk=%d crashed", ctx.batch_id, seq)
        results = [ItemResult(idx, error_code=code, error_message=message) for idx, *_ in work.items]
    stopped = any(r.error_code == "cancelled" for r in results)
    kept = [r for r in results if r.error_code != "cancelled"]  # unfinished by a stopping worker: run again

    def store(session: Session) -> None:
        batches.store_results(session=session, batch_id=work.batch_id, results=kept)

    n_failed = sum(1 for r in kept if r.error_code)
    log.info("batch=%s chunk=%d docs=%d failed=%d seconds=%.2f%s", ctx.batch_id, seq, len(kept), n_failed,
             time.monotonic() - ctx.started, " stopped" if stopped else "")
    if stopped:
        raise JobFailure("cancelled", f"stopped with {len(kept)} of {len(results)} documents done", also=store)
    return Outcome({"completed": len(kept) - n_failed, "failed": n_failed},
                   {"documents": len(kept), "seconds": round(time.monotonic() - ctx.started, 4)}, also=store)


def process(work: ChunkWork, spec: ModelSpec | None, rt: WorkerRuntime, cancel: Any) -> list[ItemResult]:
    if spec is None:
        raise JobFailure("model_not_found", f"model {work.model!r} was removed from the registry")
    loaded = rt.cache.get(spec)
    kind = work.task["type"]
    return PROCESSORS[kind](work, loaded, rt, cancel)


# ---- generate and extract: every request of the chunk in the engine at once ------------------------------


def _gen_engine(loaded: LoadedModel) -> GenerationEngine:
    if not isinstance(loaded.engine, GenerationEngine):
        raise JobFailure("invalid_input", f"model {loaded.name!r} cannot generate text")
    return loaded.engine


def _prompt_ids(loaded: LoadedModel, prompt: str, max_new: int, max_chars: int) -> list[int]:
    if len(prompt) > max_chars:
        raise JobFailure("invalid_input", f"the prompt is {len(prompt)} characters; the limit is {max_chars}")
    ids = loaded.tokenizer(prompt)["input_ids"]
    if not ids:
        raise JobFailure("invalid_input", "the prompt is empty after tokenisation")
    if loaded.max_positions and len(ids) + max_new > loaded.max_positions:
        raise JobFailure("invalid_input", f"the prompt ({len(ids)} tokens) + max_new_tokens ({max_new}) "
                         f"exceeds the model's context of {loaded.max_positions}")
    return ids


def _render(template: str, item: Item, limit: int = 4_000_000) -> str:
    """The template with {name} replaced by the document's field: a plain substitution, never str.format (no
    format specs, conversions, attribute or index access), `{{` and `}}` for literal braces. The result is
    bounded: over `limit` characters the document fails before the string is built."""
    import re

    _idx, cid, text, extra = item
    values = {**(extra or {}), "text": text, "custom_id": cid}
    tokens = re.compile(r"\{\{|\}\}|\{([^\W\d]\w*)\}|[{}]")
    pieces: list[str] = []
    size = 0
    pos = 0
    for m in tokens.finditer(template):
        literal = template[pos:m.start()]
        tok = m.group(0)
        if tok in ("{{", "}}"):
            piece = tok[0]
        elif m.group(1) is not None:
            if m.group(1) not in values:
                raise JobFailure("invalid_input", f"template field {tok} is missing from this document")
            piece = str(values[m.group(1)])
        else:
            raise JobFailure("invalid_input", "the template has an unmatched brace; write {{ or }} for a literal one")
        size += len(literal) + len(piece)
        if size > limit:
            raise JobFailure("invalid_input", f"the rendered prompt is over {limit} characters")
        pieces += (literal, piece)
        pos = m.end()
    pieces.append(template[pos:])
    return "".join(pieces)


def _gather(futures: dict[int, list[Future]], failed: dict[int, JobFailure],
            build: Callable[[list[Any]], Any]) -> dict[int, ItemResult]:
    out: dict[int, ItemResult] = {}
    for idx, err in failed.items():
        out[idx] = ItemResult(idx, error_code=err.code, error_message=err.message)
    for idx, futs in futures.items():
        try:
            out[idx] = ItemResult(idx, output=build([f.result() for f in futs]))
        except JobFailure as exc:
            out[idx] = ItemResult(idx, error_code=exc.code, error_message=exc.message)
    return out


def run_generate(work: ChunkWork, loaded: LoadedModel, rt: WorkerRuntime, cancel: Any) -> list[ItemResult]:
    engine = _gen_engine(loaded)
    p = work.params
    deadline = time.monotonic() + rt.platform.settings.default_timeout_s
    futures: dict[int, list[Future]] = {}
    failed: dict[int, JobFailure] = {}
    for item in work.items:
        try:
            ids = _prompt_ids(loaded, _render(work.task["template"], item), p["max_new_tokens"],
                              rt.platform.settings.max_prompt_chars)
        except JobFailure as exc:
            failed[item[0]] = exc
            continue
        futures[item[0]] = [engine.submit(GenRequest(
            prompt_ids=ids, max_new_tokens=p["max_new_tokens"], min_new_tokens=p.get("min_new_tokens", 0),
            temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"], stop=p["stop"],
            seed=p.get("seed"), deadline=deadline, cancel=cancel, adapter=loaded.adapter))]
    by_idx = _gather(futures, failed, lambda rs: {"text": rs[0].text, "finish_reason": rs[0].finish_reason})
    return [by_idx[item[0]] for item in work.items]


def extract_prompt(text: str, field: str) -> str:
    return f"{text}\n\nFrom the text above, give the {field} in a few words.\n{field}:"


def run_extract(work: ChunkWork, loaded: LoadedModel, rt: WorkerRuntime, cancel: Any) -> list[ItemResult]:
    engine = _gen_engine(loaded)
    fields = work.task["fields"]
    max_new = work.params.get("max_new_tokens", 32)
    deadline = time.monotonic() + rt.platform.settings.default_timeout_s
    futures: dict[int, list[Future]] = {}
    failed: dict[int, JobFailure] = {}
    for idx, _cid, text, _extra in work.items:
        try:
            prompts = [_prompt_ids(loaded, extract_prompt(text, f), max_new, rt.platform.settings.max_prompt_chars)
                       for f in fields]
        except JobFailure as exc:
            failed[idx] = exc
            continue
        futures[idx] = [engine.submit(GenRequest(prompt_ids=ids, max_new_tokens=max_new, temperature=0.0,
                                                 stop=["\n"], deadline=deadline, cancel=cancel,
                                                 adapter=loaded.adapter))
                        for ids in prompts]
    by_idx = _gather(futures, failed, lambda rs: {f: r.text.strip() for f, r in zip(fields, rs, strict=True)})
    return [by_idx[item[0]] for item in work.items]


# ---- classify: the label with the highest log-likelihood after the prompt -------------------------------


def classify_prompt(text: str, labels: list[str], instruction: str) -> str:
    return f"{instruction} Answer with one of: {', '.join(labels)}.\nText: {text}\nAnswer:"


@torch.inference_mode()
def score_continuations(loaded: LoadedModel, rows: list[tuple[list[int], list[int]]], max_batch: int) -> list[float]:
    """Sum of log-probabilities of each continuation after its prompt, right-padded batches of rows."""
    device = next(loaded.model.parameters()).device
    engine = _gen_engine(loaded)
    pad = loaded.tokenizer.pad_token_id or 0
    scores: list[float] = []
    for start in range(0, len(rows), max_batch):
        part = rows[start:start + max_batch]
        seqs = [p + c for p, c in part]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        logp = engine.forward([loaded.adapter] * len(seqs), input_ids=ids.to(device),
                              attention_mask=attn.to(device)).logits.float().log_softmax(-1)
        for i, (p, c) in enumerate(part):
            positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)
            targets = torch.tensor(c, device=device)
            scores.append(float(logp[i, positions, targets].sum()))
    return scores


def _encoder_texts(work: ChunkWork, rt: WorkerRuntime) -> tuple[dict[int, ItemResult], list[Item]]:
    """The documents an encoder can take, and a failed result for each one over the length limit."""
    limit = rt.platform.settings.max_prompt_chars
    failed = {item[0]: ItemResult(item[0], error_code="invalid_input",
                                  error_message=f"the text is {len(item[2])} characters; the limit is {limit}")
              for item in work.items if len(item[2]) > limit}
    return failed, [item for item in work.items if item[0] not in failed]


def run_encoder_classify(work: ChunkWork, engine: EncoderEngine, rt: WorkerRuntime) -> list[ItemResult]:
    """A fine-tuned classifier: the chunk's texts through its engine together; labels with probabilities
    (narrowed to task.labels when given, renormalised)."""
    wanted = work.task.get("labels")
    unknown = sorted(set(wanted or ()) - set(engine.labels))
    if unknown:
        raise JobFailure("invalid_input", f"task.labels {unknown} are not labels of model {engine.name!r}; it "
                         f"knows {engine.labels}")
    out, todo = _encoder_texts(work, rt)
    for item, scores in zip(todo, engine.classify([t for _i, _c, t, _e in todo]), strict=True):
        if wanted:
            total = sum(scores[label] for label in wanted) or 1.0
            scores = {label: round(p / total, 6) for label, p in scores.items() if label in wanted}
        out[item[0]] = ItemResult(item[0], output={"label": next(iter(scores)), "scores": scores})
    return [out[item[0]] for item in work.items]


def run_ner(work: ChunkWork, loaded: LoadedModel, rt: WorkerRuntime, cancel: Any) -> list[ItemResult]:
    if not isinstance(loaded.engine, EncoderEngine) or loaded.engine.kind != "token-classifier":
        raise JobFailure("invalid_input", f"model {loaded.name!r} is not a token classifier")
    out, todo = _encoder_texts(work, rt)
    for item, ents in zip(todo, loaded.engine.entities([t for _i, _c, t, _e in todo]), strict=True):
        out[item[0]] = ItemResult(item[0], output={"entities": ents})
    return [out[item[0]] for item in work.items]


def run_classify(work: ChunkWork, loaded: LoadedModel, rt: WorkerRuntime, cancel: Any) -> list[ItemResult]:
    if isinstance(loaded.engine, EncoderEngine) and loaded.engine.kind == "classifier":
        return run_encoder_classify(work, loaded.engine, rt)
    _gen_engine(loaded)
    labels: list[str] = work.task["labels"]
    tok = loaded.tokenizer
    label_ids = [tok(" " + label, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for label in labels]
    longest = max(len(x) for x in label_ids)
    rows: list[tuple[list[int], list[int]]] = []
    owners: list[int] = []
    out: dict[int, ItemResult] = {}
    for idx, _cid, text, _extra in work.items:
        try:
            prompt = _prompt_ids(loaded, classify_prompt(text, labels, work.task.get("instruction", "")), longest,
                                 rt.platform.settings.max_prompt_chars)
        except JobFailure as exc:
            out[idx] = ItemResult(idx, error_code=exc.code, error_message=exc.message)
            continue
        for ids in label_ids:
            rows.append((prompt, ids))
            owners.append(idx)
    if cancel.is_set():
        raise JobFailure("cancelled", "worker stopping")
    scores = score_continuations(loaded, rows, rt.platform.settings.worker_max_batch) if rows else []
    per_doc: dict[int, list[float]] = {}
    for idx, s in zip(owners, scores, strict=True):
        per_doc.setdefault(idx, []).append(s)
    for idx, ss in per_doc.items():
        best = max(range(len(labels)), key=lambda i: ss[i])
        out[idx] = ItemResult(idx, output={"label": labels[best],
                                           "scores": {lab: round(v, 4) for lab, v in zip(labels, ss, strict=True)}})
    return [out[item[0]] for item in work.items]


# ---- embed -----------------------------------------------------------------------------------------------


def run_embed(work: ChunkWork, loaded: LoadedModel, rt: WorkerRuntime, cancel: Any) -> list[ItemResult]:
    if not isinstance(loaded.engine, EmbeddingEngine):
        raise JobFailure("invalid_input", f"model {loaded.name!r} is not an embedding model")
    out: dict[int, ItemResult] = {}
    todo = []
    for item in work.items:
        if len(item[2]) > rt.platform.settings.max_prompt_chars:
            out[item[0]] = ItemResult(item[0], error_code="invalid_input",
                                      error_message=f"the text is {len(item[2])} characters; the limit is "
                                                    f"{rt.platform.settings.max_prompt_chars}")
        else:
            todo.append(item)
    texts = [t for _i, _c, t, _e in todo]
    vectors = loaded.engine.embed(texts, normalize=work.task.get("normalize", True))[0] if texts else []
    for item, vec in zip(todo, vectors, strict=True):
        out[item[0]] = ItemResult(item[0], output={"embedding": vec})
    return [out[item[0]] for item in work.items]


# ---- OpenAI batch lines: each request with its own parameters, the chunk's requests in the engine at once --


def run_openai(work: ChunkWork, loaded: LoadedModel, rt: WorkerRuntime, cancel: Any) -> list[ItemResult]:
    endpoint = work.task["endpoint"]
    items = [(idx, extra or {}) for idx, _cid, _text, extra in work.items]
    if endpoint == "/v1/embeddings":
        return _openai_embed(work, loaded, items)
    engine = _gen_engine(loaded)
    deadline = time.monotonic() + rt.platform.settings.default_timeout_s
    futures: dict[int, list[Future]] = {}
    failed: dict[int, JobFailure] = {}
    for idx, extra in items:
        p = extra["params"]
        try:
            ids = kinds.prompt_ids(loaded, extra["input"])
            if loaded.max_positions and len(ids) + p["max_new_tokens"] > loaded.max_positions:
                raise JobFailure("invalid_input", f"the prompt ({len(ids)} tokens) + max_tokens "
                                 f"({p['max_new_tokens']}) exceeds the model's context of {loaded.max_positions}")
        except JobFailure as exc:
            failed[idx] = exc
            continue
        seed = p.get("seed")
        futures[idx] = [engine.submit(GenRequest(
            prompt_ids=ids, max_new_tokens=p["max_new_tokens"], min_new_tokens=p.get("min_new_tokens", 0),
            temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"], stop=p["stop"],
            seed=None if seed is None else seed + i, deadline=deadline, cancel=cancel, adapter=loaded.adapter))
            for i in range(int(p.get("n", 1)))]

    def body(results: list[Any]) -> dict[str, Any]:
        first = results[0]
        output: dict[str, Any] = {"text": first.text, "finish_reason": first.finish_reason}
        if len(results) > 1:
            output["choices"] = [{"text": r.text, "finish_reason": r.finish_reason} for r in results]
        completion = sum(r.completion_tokens for r in results)
        usage = {"prompt_tokens": first.prompt_tokens, "completion_tokens": completion}
        return completions.result_body(endpoint, lifecycle.new_id("job"), int(time.time()), work.model, output,
                                       usage)

    by_idx = _gather(futures, failed, body)
    return [by_idx[idx] for idx, _ in items]


def _openai_embed(work: ChunkWork, loaded: LoadedModel, items: list[tuple[int, dict[str, Any]]]) -> list[ItemResult]:
    if not isinstance(loaded.engine, EmbeddingEngine):
        raise JobFailure("invalid_input", f"model {loaded.name!r} is not an embedding model")
    texts = [t for _idx, extra in items for t in extra["input"]["texts"]]
    vectors, tokens = loaded.engine.embed(texts, normalize=True)
    out: list[ItemResult] = []
    at = 0
    for idx, extra in items:
        n = len(extra["input"]["texts"])
        usage = {"prompt_tokens": sum(tokens[at:at + n])}
        out.append(ItemResult(idx, output=completions.result_body(
            "/v1/embeddings", "", int(time.time()), work.model, {"embeddings": vectors[at:at + n]}, usage)))
        at += n
    return out


PROCESSORS: dict[str, Callable[[ChunkWork, LoadedModel, WorkerRuntime, Any], list[ItemResult]]] = {
    "generate": run_generate, "extract": run_extract, "classify": run_classify, "embed": run_embed,
    "openai": run_openai, "ner": run_ner,
}
