"""Text generation that shares forward passes between concurrent jobs.

One engine thread per loaded model owns the model. Celery task threads hand it requests and wait on a
future. The engine keeps one running batch (continuous batching): between decode steps it prefills whatever
is waiting (up to `max_batch` rows in all) and merges it into the batch's left-padded KV cache; it samples
each row with that request's own parameters and generator, and settles each future as its row ends (eos,
stop string, length, cancel or timeout), dropping the row from the batch at once.

Fine-tuned models share their base's engine: their LoRA adapters are loaded onto the one base model (peft), and
a forward pass names each row's adapter, so requests for the base and for any of its adapters batch together.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workers.errors import JobFailure
from workers.loaders import BUILD_LOCK

log = logging.getLogger(__name__)


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # end-of-sequence is suppressed until this many tokens
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    deadline: float = float("inf")  # time.monotonic() after which the request fails with `timeout`
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    produced: int = 0  # tokens generated so far (read by the task thread for progress)
    adapter: str | None = None  # a LoRA adapter loaded on this engine's model (a fine-tuned model); None: base
    on_token: Callable[[list[int]], None] | None = None  # called from the engine thread with the tokens so far


@dataclass(frozen=True)
class GenResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    batch_size: int


class GenerationEngine:
    def __init__(self, model: Any, tokenizer: Any, *, device: str, max_batch: int = 64, name: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.name = name
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._busy = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.batches = 0
        self.peft: Any = None  # the base wrapped by peft once an adapter is loaded; self.model stays the base
        self.forward_lock = threading.Lock()  # held by every forward pass and by adapter loading

    def add_adapter(self, key: str, path: str) -> None:
        """Load a LoRA adapter onto the base model. Calls of the bare model keep giving the base model's output:
        every adapter layer is left inactive, and only a forward through `self.peft` naming the adapter uses it."""
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        with self.forward_lock, BUILD_LOCK:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=key,
                                                      autocast_adapter_dtype=False)
            else:
                self.peft.load_adapter(path, adapter_name=key, autocast_adapter_dtype=False)
            for module in self.model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.set_adapter([])
            self.peft.eval()

    def forward(self, adapters: list[str | None], **inputs: Any) -> Any:
        """One forward pass of the batch whose row i uses adapter adapters[i] (None: the base model)."""
        with self.forward_lock:
            if self.peft is not None and any(adapters):
                return self.peft(**inputs, adapter_names=[a or "__base__" for a in adapters])
            return self.model(**inputs)

    # ---- public ------------------------------------------------------------------------------------------

    def submit(self, req: GenRequest) -> Future:
        if self._stopped:
            raise RuntimeError("engine stopped")
        self._ensure_thread()
        with self._lock:
            self._busy += 1
        self._queue.put(req)
        return req.future

    def generate(self, req: GenRequest) -> GenResult:
        return self.submit(req).result()

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._busy == 0

    def stop(self) -> None:
        self._stopped = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- engine thread -----------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        with torch.inference_mode():  # per thread: every tensor of the batch lives in inference mode
            self._serve()

    def _serve(self) -> None:
        """Continuous batching: between decode steps, waiting requests are prefilled and join the running batch;
        finished rows leave it at once, so a long request never holds short ones back."""
        batch: _Batch | None = None
        while True:
            room = self.max_batch - len(batch.rows) if batch and batch.mergeable else 0 if batch else self.max_batch
            new = self._take(room, block=batch is None)
            if new is None:
                if batch is not None:
                    batch.fail_all(JobFailure("internal", "the engine stopped"))
                return
            try:
                if new:
                    batch = self._admit(batch, new)
                assert batch is not None
                finished = batch.step(self)
                if not batch.rows:
                    batch = None
                else:
                    batch.decode(self)
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                failure = _as_failure(exc)
                waiting = {id(r): r for r in [row.req for row in (batch.rows if batch else [])] + (new or [])}
                finished = [_Row(r, None) for r in waiting.values()]
                for r in waiting.values():
                    if not r.future.done():
                        r.future.set_exception(failure)
                batch = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            with self._lock:
                self._busy -= len(finished)

    def _take(self, room: int, *, block: bool) -> list[GenRequest] | None:
        """Waiting requests, at most `room`; None when the engine is told to stop."""
        taken: list[GenRequest] = []
        if block:
            first = self._queue.get()
            if first is None:
                return None
            taken.append(first)
        while len(taken) < room:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return None
            taken.append(nxt)
        return taken

    def _admit(self, batch: _Batch | None, reqs: list[GenRequest]) -> _Batch:
        """Prefill the new requests as one left-padded batch, then merge them into the running one."""
        self.batches += 1
        lens = [len(r.prompt_ids) for r in reqs]
        width = max(lens)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - lens[i] :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attn[i, width - lens[i] :] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.forward([r.adapter for r in reqs], input_ids=ids, attention_mask=attn, position_ids=pos,
                              past_key_values=cache, use_cache=True).logits[:, -1, :]
        rows = [_Row(r, _generator(r.seed, self.device), next_pos=lens[i]) for i, r in enumerate(reqs)]
        fresh = _Batch(rows, cache, attn, logits)
        merged = fresh if batch is None else batch.merge(fresh)
        for row in rows:
            row.batch_size = len(merged.rows)
        return merged

    def _step_row(self, r: GenRequest, toks: list[int], token: int) -> str | None:
        if token in self.eos_ids:
            return "stop"
        toks.append(token)
        r.produced = len(toks)
        if r.on_token is not None:
            try:
                r.on_token(toks)
            except Exception:  # noqa: BLE001 - a listener must never break the batch
                log.exception("token listener failed")
        if r.stop and self._stop_hit(r, toks):
            return "stop"
        if len(toks) >= r.max_new_tokens:
            return "length"
        return None

    def _stop_hit(self, r: GenRequest, toks: list[int]) -> bool:
        window = max(len(s) for s in r.stop) * 4 + 4  # a character is at most 4 byte-level tokens
        tail = self.tokenizer.decode(toks[-window:], skip_special_tokens=True)
        return any(s in tail for s in r.stop)

    def _result(self, row: _Row, reason: str) -> GenResult:
        r, toks = row.req, row.tokens
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        if r.stop:
            cut = min((text.find(s) for s in r.stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return GenResult(text=text, finish_reason=reason, prompt_tokens=len(r.prompt_ids),
                         completion_tokens=len(toks), seconds=time.monotonic() - row.t0, batch_size=row.batch_size)


@dataclass
class _Row:
    req: GenRequest
    gen: torch.Generator | None
    next_pos: int = 0  # position id of this row's next token (its own count, whatever the padding)
    tokens: list[int] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    batch_size: int = 1


class _Batch:
    """The running batch: rows, their shared left-padded KV cache and attention mask, and the logits of each
    row's next token. Rows are added (merge) and removed (select) between decode steps."""

    def __init__(self, rows: list[_Row], cache: DynamicCache, attn: torch.Tensor, logits: torch.Tensor) -> None:
        self.rows, self.cache, self.attn, self.logits = rows, cache, attn, logits
        self.last: torch.Tensor | None = None
        # rows can join mid-flight only when every layer is a plain growing cache (not sliding windows)
        self.mergeable = all(type(layer) is DynamicLayer for layer in cache.layers)

    def merge(self, other: _Batch) -> _Batch:
        width = max(self.attn.shape[1], other.attn.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_lpad(mine.keys, width), _lpad(theirs.keys, width)])
            mine.values = torch.cat([_lpad(mine.values, width), _lpad(theirs.values, width)])
        self.attn = torch.cat([_lpad(self.attn, width), _lpad(other.attn, width)])
        self.logits = torch.cat([self.logits, other.logits])
        self.rows = self.rows + other.rows
        return self

    def step(self, eng: GenerationEngine) -> list[_Row]:
        """Sample every row's next token with its own parameters; settle and drop the rows that ended."""
        logits = self.logits.float()
        for i, row in enumerate(self.rows):
            if len(row.tokens) < row.req.min_new_tokens and eng.eos_ids:
                logits[i, list(eng.eos_ids)] = float("-inf")
        tokens = _sample(logits, [r.req for r in self.rows], [r.gen for r in self.rows])
        finished: list[int] = []
        for i, row in enumerate(self.rows):
            r = row.req
            reason = eng._step_row(r, row.tokens, int(tokens[i]))
            if reason is None and r.cancel.is_set():
                r.future.set_exception(JobFailure("cancelled", "cancelled while running"))
            elif reason is None and time.monotonic() > r.deadline:
                r.future.set_exception(JobFailure("timeout", "the job ran past its timeout_s"))
            elif reason is not None:
                r.future.set_result(eng._result(row, reason))
            else:
                continue
            finished.append(i)
        self.last = tokens
        done = [self.rows[i] for i in finished]
        if finished:
            self._keep([i for i in range(len(self.rows)) if i not in set(finished)])
        return done

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        idx = torch.tensor(keep, device=self.attn.device)
        self.attn = self.attn.index_select(0, idx)
        self.logits = self.logits.index_select(0, idx)
        assert self.last is not None
        self.last = self.last.index_select(0, idx)
        first = int(self.attn.any(dim=0).nonzero()[0])  # columns that are padding for every row left: drop
        self.attn = self.attn[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, first:, :]
            layer.values = layer.values.index_select(0, idx)[:, :, first:, :]

    def decode(self, eng: GenerationEngine) -> None:
        assert self.last is not None
        n = len(self.rows)
        self.attn = torch.cat([self.attn, self.attn.new_ones((n, 1))], dim=1)
        pos = torch.tensor([[r.next_pos] for r in self.rows], device=self.attn.device)
        for r in self.rows:
            r.next_pos += 1
        self.logits = eng.forward([r.req.adapter for r in self.rows], input_ids=self.last[:, None],
                                  attention_mask=self.attn, position_ids=pos, past_key_values=self.cache,
                                  use_cache=True).logits[:, -1, :]

    def fail_all(self, failure: JobFailure) -> None:
        for row in self.rows:
            if not row.req.future.done():
                row.req.future.set_exception(failure)


def _lpad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the time dimension (dim 1 of a mask, dim 2 of keys/values) with zeros up to `width`."""
    dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else secrets.randbits(63))
    return g


def _sample(logits: torch.Tensor, reqs: list[GenRequest], gens: list[torch.Generator | None]) -> torch.Tensor:
    """Greedy rows by argmax in one op; sampled rows each with their own temperature/top-k/top-p/seed."""
    tokens = logits.argmax(dim=-1)
    for i, r in enumerate(reqs):
        if r.temperature == 0.0:
            continue
        row = logits[i] / r.temperature
        if r.top_k:
            kth = torch.topk(row, min(r.top_k, row.numel())).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        if r.top_p < 1.0:
            sorted_logits, order = torch.sort(row, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs > r.top_p  # keep the smallest prefix whose mass reaches top_p
            row = row.scatter(0, order[drop], float("-inf"))
        tokens[i] = torch.multinomial(row.softmax(-1), 1, generator=gens[i])[0]
    return tokens


def _as_failure(exc: BaseException) -> JobFailure:
    if isinstance(exc, JobFailure):
        return exc
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return JobFailure("out_of_memory", "the GPU ran out of memory for this batch")
    log.exception("generation batch failed")
    return JobFailure("internal", f"generation failed: {exc.__class__.__name__}")
