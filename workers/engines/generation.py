"""Text generation that shares forward passes between concurrent jobs.

One engine thread per loaded model owns the model. Celery task threads hand it requests and wait on a
future; the engine takes everything waiting (up to `max_batch`), runs it as one left-padded batch with a
KV cache, samples each row with that request's own parameters and generator, and settles each future
as its row ends (eos, stop string, length, cancel or timeout), checked between decode steps.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from workers.errors import JobFailure

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
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                failure = _as_failure(exc)
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(failure)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            finally:
                with self._lock:
                    self._busy -= len(batch)

    @torch.inference_mode()
    def _run_batch(self, reqs: list[GenRequest]) -> None:
        self.batches += 1
        t0 = time.monotonic()
        n = len(reqs)
        lens = [len(r.prompt_ids) for r in reqs]
        width = max(lens)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - lens[i] :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attn[i, width - lens[i] :] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        gens = [_generator(r.seed, self.device) for r in reqs]
        out_tokens: list[list[int]] = [[] for _ in reqs]
        done = [False] * n
        cache = DynamicCache()
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                            use_cache=True).logits[:, -1, :]
        next_pos = pos[:, -1:] + 1
        while True:
            logits = logits.float()
            for i, r in enumerate(reqs):
                if not done[i] and len(out_tokens[i]) < r.min_new_tokens and self.eos_ids:
                    logits[i, list(self.eos_ids)] = float("-inf")
            tokens = _sample(logits, reqs, gens, done)
            for i, r in enumerate(reqs):
                if done[i]:
                    continue
                reason = self._step_row(r, out_tokens[i], int(tokens[i]))
                if reason is None and r.cancel.is_set():
                    done[i] = True
                    r.future.set_exception(JobFailure("cancelled", "cancelled while running"))
                    continue
                if reason is None and time.monotonic() > r.deadline:
                    done[i] = True
                    r.future.set_exception(JobFailure("timeout", "the job ran past its timeout_s"))
                    continue
                if reason is not None:
                    done[i] = True
                    r.future.set_result(self._result(r, out_tokens[i], reason, t0, n))
            if all(done):
                return
            feed = torch.tensor([[self.pad_id if done[i] else out_tokens[i][-1]] for i in range(n)],
                                device=self.device)
            attn = torch.cat([attn, attn.new_ones((n, 1))], dim=1)
            logits = self.model(input_ids=feed, attention_mask=attn, position_ids=next_pos, past_key_values=cache,
                                use_cache=True).logits[:, -1, :]
            next_pos = next_pos + 1

    def _step_row(self, r: GenRequest, toks: list[int], token: int) -> str | None:
        if token in self.eos_ids:
            return "stop"
        toks.append(token)
        if r.stop and self._stop_hit(r, toks):
            return "stop"
        if len(toks) >= r.max_new_tokens:
            return "length"
        return None

    def _stop_hit(self, r: GenRequest, toks: list[int]) -> bool:
        window = max(len(s) for s in r.stop) * 4 + 4  # a character is at most 4 byte-level tokens
        tail = self.tokenizer.decode(toks[-window:], skip_special_tokens=True)
        return any(s in tail for s in r.stop)

    def _result(self, r: GenRequest, toks: list[int], reason: str, t0: float, batch: int) -> GenResult:
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        if r.stop:
            cut = min((text.find(s) for s in r.stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return GenResult(text=text, finish_reason=reason, prompt_tokens=len(r.prompt_ids),
                         completion_tokens=len(toks), seconds=time.monotonic() - t0, batch_size=batch)


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else secrets.randbits(63))
    return g


def _sample(logits: torch.Tensor, reqs: list[GenRequest], gens: list[torch.Generator],
            done: list[bool]) -> torch.Tensor:
    """Greedy rows by argmax in one op; sampled rows each with their own temperature/top-k/top-p/seed."""
    tokens = logits.argmax(dim=-1)
    for i, r in enumerate(reqs):
        if done[i] or r.temperature == 0.0:
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
