"""Text generation that shares forward passes between concurrent jobs.

One engine thread per loaded model owns the model. Celery task threads hand it requests and wait on a
future. The engine keeps one running batch (continuous batching) in a slot cache (workers.engines.kv): between
decode steps the waiting requests are prefilled together, grouped by length and in chunks, straight into free
slots, reusing the keys/values of prompt prefixes that requests share (the prefix store); every row is sampled
in one vectorised draw with its own parameters (workers.engines.sampling); rows that end (eos, stop string,
length, cancel or timeout) are settled and leave at once, the last rows moving into their slots. On a GPU the
decode step is replayed from CUDA graphs (workers.engines.graphs).

Fine-tuned models share their base's engine: their LoRA adapters are loaded onto the one base model (peft), and
a forward pass names each row's adapter, so requests for the base and for any of its adapters batch together.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.engines.graphs import DecodeGraphs
from workers.engines.kv import PrefixKV, PrefixStore, SlotCache
from workers.engines.locks import BUILD_LOCK, in_own_thread
from workers.engines.sampling import sample, uniforms
from workers.errors import JobFailure

log = logging.getLogger(__name__)

CHECK_EVERY = 4  # decode steps between looks at the rows' cancel events and deadlines (milliseconds apart)


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
    adapter: str | None = None  # a LoRA adapter loaded on this engine's model (a fine-tuned model); None: base
    on_token: Callable[[list[int]], None] | None = None  # called from the engine thread with the tokens so far
    tokens: list[int] = field(default_factory=list)  # generated so far (the engine appends; others only read)

    @property
    def produced(self) -> int:
        """Tokens generated so far (read by the task thread for progress)."""
        return len(self.tokens)


@dataclass(frozen=True)
class GenResult:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    batch_size: int


class GenerationEngine:
    def __init__(self, model: Any, tokenizer: Any, *, device: str, max_batch: int = 64, name: str = "",
                 prefix_cache_bytes: int = 256 * 2**20, prefill_chunk: int = 512, prefill_tokens: int = 8192,
                 cuda_graphs: bool | None = None) -> None:
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
        self.eos_t = torch.tensor(sorted(eos_ids), dtype=torch.long, device=self.device)
        self.prefill_chunk = prefill_chunk  # columns per prefill forward (long prompts go in chunks)
        self.prefill_tokens = prefill_tokens  # rows x columns per prefill forward; also what joins per step
        self.prefix = PrefixStore(budget_bytes=prefix_cache_bytes) if prefix_cache_bytes else None
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and os.environ.get("LLMOS_ENGINE_CUDA_GRAPHS", "1") != "0"
        self.graphs = DecodeGraphs(self, capture=cuda_graphs) if cuda_graphs else None
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        types = getattr(cfg, "layer_types", None) or []
        self.window = getattr(cfg, "sliding_window", None) if "sliding_attention" in types else None
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._pending: deque[GenRequest] = deque()
        self._busy = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.batches = 0  # admissions: groups of arrivals that joined the running batch together
        self.prefill_forwards = 0
        self.peft: Any = None  # the base wrapped by peft once an adapter is loaded; self.model stays the base
        self.forward_lock = threading.Lock()  # held by every forward pass and by adapter loading
        self._mask_values: tuple[torch.Tensor, torch.Tensor] | None = None  # 0 and the dtype's min, for masks
        self.dtype = model.dtype  # (a property that walks the parameters: read once)

    def add_adapter(self, key: str, path: str) -> None:
        """Load a LoRA adapter onto the base model. Calls of the bare model keep giving the base model's output:
        every adapter layer is left inactive, and only a forward through `self.peft` naming the adapter uses it."""
        in_own_thread(lambda: self._add_adapter(key, path), name=f"llmos-adapter-{key}")

    def _add_adapter(self, key: str, path: str) -> None:
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
        batch = _Batch(self)
        while True:
            if not self._pull(block=not batch.rows and not self._pending):
                stopped = JobFailure("internal", "the engine stopped")
                batch.fail_all(stopped)
                for r in self._pending:
                    r.future.set_exception(stopped)
                return
            new = self._next_arrivals(len(batch.rows))
            try:
                if new:
                    batch.admit(new)
                finished = batch.step()
                if batch.rows:
                    batch.decode()
                else:
                    batch.release()
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                failure = _as_failure(exc)
                waiting = {id(r): r for r in [row.req for row in batch.rows] + new}
                finished = [_Row(r, 0) for r in waiting.values()]
                for r in waiting.values():
                    if not r.future.done():
                        r.future.set_exception(failure)
                batch = _Batch(self)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            with self._lock:
                self._busy -= len(finished)

    def _pull(self, *, block: bool) -> bool:
        """Move what was submitted to the pending list; False when the engine is told to stop."""
        if block:
            first = self._queue.get()
            if first is None:
                return False
            self._pending.append(first)
        while not self._queue.empty():  # this thread is the only consumer: not empty means get() has one
            nxt = self._queue.get_nowait()
            if nxt is None:
                return False
            self._pending.append(nxt)
        return True

    def _next_arrivals(self, running: int) -> list[GenRequest]:
        """Pending requests that join now: as many as there is room for, up to `prefill_tokens` prompt tokens
        (at least one), so a flood of arrivals is prefilled over a few steps while the batch keeps decoding."""
        taken: list[GenRequest] = []
        tokens = 0
        while self._pending and running + len(taken) < self.max_batch:
            n = len(self._pending[0].prompt_ids)
            if taken and tokens + n > self.prefill_tokens:
                break
            taken.append(self._pending.popleft())
            tokens += n
        return taken

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

    def _partial(self, row: _Row, reason: str) -> dict[str, Any]:
        """What a stopped request had generated: kept as the job's output, so a cancel loses nothing."""
        res = self._result(row, reason)
        return {"text": res.text, "finish_reason": reason, "completion_tokens": res.completion_tokens}

    def masks(self, allowed: torch.Tensor) -> Any:
        """The additive attention mask(s) for `allowed` [rows, 1, queries, columns] (True: may attend); a dict
        per layer type for models with sliding-window layers."""
        dtype = self.dtype
        if self._mask_values is None:
            self._mask_values = (torch.zeros((), dtype=dtype, device=self.device),
                                 torch.full((), torch.finfo(dtype).min, dtype=dtype, device=self.device))
        full = torch.where(allowed, *self._mask_values)
        if self.window is None:
            return full
        cols = torch.arange(allowed.shape[3], device=self.device)
        last = (allowed * cols).amax(-1, keepdim=True)  # each query's own column: its last allowed one
        near = cols > last - self.window
        windowed = full.masked_fill(~near, torch.finfo(dtype).min)
        return {"full_attention": full, "sliding_attention": windowed}


@dataclass
class _Row:
    req: GenRequest
    seed: int
    next_pos: int = 0  # the column (and position) of this row's next token
    t0: float = field(default_factory=time.monotonic)
    batch_size: int = 1

    @property
    def tokens(self) -> list[int]:
        return self.req.tokens


class _Batch:
    """The running batch: row i in slot i of the slot cache, the logits of each row's next token, and the rows'
    sampling parameters as tensors (rebuilt when rows join or leave)."""

    def __init__(self, eng: GenerationEngine) -> None:
        self.eng = eng
        self.rows: list[_Row] = []
        self.kv: SlotCache | None = None
        self.logits: torch.Tensor | None = None
        self.last: torch.Tensor | None = None
        self._p: dict[str, torch.Tensor] | None = None
        # what the rows need checked, planned when rows join or leave (see _params)
        self._lists: list[list[int]] = []  # each row's generated tokens (its request's list)
        self._stopping: list[int] = []  # rows with stop strings
        self._listening: list[int] = []  # rows with a token listener (streams)
        self._length_in = 0  # steps until the first row reaches its max_new_tokens
        self._early_in = 0  # steps while some row is still short of its min_new_tokens
        self._steps = 0
        self._pos: torch.Tensor | None = None  # the rows' next columns (rebuilt when rows join or leave)
        self._width = 0  # columns attention sees in the next decode: the largest next column + 1
        self._advanced = 0  # decode steps the rows' next_pos lag behind (see _sync_pos)
        self._adapters: list[str | None] = []

    def _cache(self, slots: int, columns: int) -> SlotCache:
        eng = self.eng
        if self.kv is None:
            start_slots = eng.max_batch if eng.graphs else 8
            self.kv = SlotCache.for_model(eng.model.config, dtype=eng.dtype, device=eng.device,
                                          slots=max(start_slots, _pow2(slots)), capacity=max(128, _pow2(columns)))
        elif self.kv.ensure(slots, columns) and eng.graphs:
            eng.graphs.reset()
        return self.kv

    def release(self) -> None:
        """The batch is empty: free the cache (kept on a GPU, where the decode graphs point into it)."""
        if not self.eng.graphs:
            self.kv = None
        self.logits = self.last = None
        self._p = self._pos = None
        self._advanced = 0

    # ---- joining -----------------------------------------------------------------------------------------

    def admit(self, reqs: list[GenRequest]) -> None:
        """Prefill the arrivals together, grouped by (reused prefix, length), straight into free slots."""
        eng = self.eng
        eng.batches += 1
        self._sync_pos()
        n0 = len(self.rows)
        self._cache(n0 + len(reqs), max(len(r.prompt_ids) for r in reqs) + 1)
        hits = self._prefix_hits(reqs, spare=n0 + len(reqs))
        starts = [h.keys.shape[2] if h is not None else 0 for h in hits]
        order = sorted(range(len(reqs)), key=lambda i: (starts[i], len(reqs[i].prompt_ids)))
        rows = [_Row(reqs[i], _seed(reqs[i].seed), next_pos=len(reqs[i].prompt_ids)) for i in order]
        assert self.kv is not None
        by_prefix: dict[int, tuple[PrefixKV, list[int]]] = {}
        for j, i in enumerate(order):
            hit = hits[i]
            if hit is not None:
                by_prefix.setdefault(id(hit), (hit, []))[1].append(n0 + j)
        for hit, slots in by_prefix.values():
            self.kv.load(slots, hit)
        logits = self._prefill(n0, [r.req.prompt_ids for r in rows], [starts[i] for i in order],
                               [r.req.adapter for r in rows])
        self.rows += rows
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self._p = self._pos = None
        for row in rows:
            row.batch_size = len(self.rows)

    def _prefix_hits(self, reqs: list[GenRequest], spare: int) -> list[PrefixKV | None]:
        """Each request's longest stored prefix. A prefix that requests have now shown more than once is first
        prefilled on its own (in spare slots) and stored."""
        store = self.eng.prefix
        if store is None:
            return [None] * len(reqs)
        chains = [store.chain(r.prompt_ids) for r in reqs]
        wanted: dict[tuple[str | None, int], list[int]] = {}
        for r, chain in zip(reqs, chains, strict=True):
            shared = store.note(r.adapter, chain)
            if shared and not store.has(r.adapter, chain[shared - 1]):
                wanted.setdefault((r.adapter, chain[shared - 1]), r.prompt_ids[: shared * store.block])
        if wanted:
            keys = sorted(wanted, key=lambda k: len(wanted[k]))
            ids = [wanted[k] for k in keys]
            self._cache(spare + len(ids), max(map(len, ids)))
            self._prefill(spare, ids, [0] * len(ids), [k[0] for k in keys])
            assert self.kv is not None
            for j, key in enumerate(keys):
                store.put(key[0], key[1], ids[j], self.kv.save(spare + j, len(ids[j])))
        hits = [store.find(r.adapter, chain, r.prompt_ids) for r, chain in zip(reqs, chains, strict=True)]
        for hit in hits:
            if hit is not None:
                store.hits += 1
                store.tokens_saved += hit.keys.shape[2]
        return hits

    def _prefill(self, slot0: int, prompts: list[list[int]], starts: list[int],
                 adapters: list[str | None]) -> torch.Tensor:
        """Logits of the next token of each prompt (sorted by start, then length) prefilled into slots slot0...
        from column starts[i]: consecutive prompts with one start share a forward while rows x columns stay
        within `prefill_tokens`; columns go `prefill_chunk` at a time."""
        eng = self.eng
        out: list[torch.Tensor] = []
        j = 0
        while j < len(prompts):
            g = 1
            while (j + g < len(prompts) and starts[j + g] == starts[j]
                   and (g + 1) * (len(prompts[j + g]) - starts[j]) <= eng.prefill_tokens):
                g += 1
            out.append(self._prefill_group(slot0 + j, prompts[j : j + g], starts[j], adapters[j : j + g]))
            j += g
        return torch.cat(out)

    def _prefill_group(self, slot0: int, prompts: list[list[int]], start: int,
                       adapters: list[str | None]) -> torch.Tensor:
        eng, kv = self.eng, self.kv
        assert kv is not None
        g, lens = len(prompts), [len(p) for p in prompts]
        end = max(lens)
        ids = torch.full((g, end - start), eng.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):  # right-padded: causal attention keeps padding out of real positions
            ids[i, : lens[i] - start] = torch.tensor(p[start:], dtype=torch.long)
        ids = ids.to(eng.device)
        lens_t = torch.tensor(lens, device=eng.device)
        logits: list[torch.Tensor | None] = [None] * g
        for c0 in range(start, end, eng.prefill_chunk):
            c1 = min(c0 + eng.prefill_chunk, end)
            cols = torch.arange(c1, device=eng.device)
            qpos = torch.arange(c0, c1, device=eng.device)
            allowed = (cols[None, None, :] <= qpos[None, :, None]) & (cols[None, None, :] < lens_t[:, None, None])
            ending = [i for i in range(g) if c0 <= lens[i] - 1 < c1]
            keep = sorted({lens[i] - 1 - c0 for i in ending})
            kv.rows, kv.write, kv.start = slice(slot0, slot0 + g), None, c0
            res = eng.forward(adapters, input_ids=ids[:, c0 - start : c1 - start], position_ids=qpos.expand(g, -1),
                              attention_mask=eng.masks(allowed[:, None]), cache=kv, use_cache=True,
                              logits_to_keep=torch.tensor(keep or [0], device=eng.device))
            eng.prefill_forwards += 1
            for i in ending:
                logits[i] = res.logits[i, keep.index(lens[i] - 1 - c0)]
        return torch.stack([x for x in logits if x is not None])

    # ---- stepping ----------------------------------------------------------------------------------------

    def _params(self) -> dict[str, torch.Tensor]:
        """The rows' sampling parameters as tensors, and the plan of which rows need which checks (both rebuilt
        when rows join or leave); "hot" is present when some row samples: an all-greedy batch never draws."""
        if self._p is None:
            dev, rows = self.eng.device, self.rows
            rs = [row.req for row in rows]
            self._p = {
                "temperature": torch.tensor([r.temperature for r in rs], dtype=torch.float32, device=dev),
                "top_k": torch.tensor([r.top_k for r in rs], dtype=torch.long, device=dev),
                "top_p": torch.tensor([r.top_p for r in rs], dtype=torch.float32, device=dev),
                "seed": torch.tensor([row.seed for row in rows], dtype=torch.long, device=dev),
            }
            if any(r.temperature > 0 for r in rs):
                self._p["hot"] = self._p["temperature"]
            self._lists = [r.tokens for r in rs]
            self._stopping = [i for i, r in enumerate(rs) if r.stop]
            self._listening = [i for i, r in enumerate(rs) if r.on_token is not None]
            self._length_in = min(r.max_new_tokens - len(r.tokens) for r in rs)
            self._early_in = max(r.min_new_tokens - len(r.tokens) for r in rs)
        return self._p

    def step(self) -> list[_Row]:
        """Sample every row's next token with its own parameters (one vectorised draw, none for an all-greedy
        batch), then settle the rows that ended and let them leave. Per row, the host only appends the token and
        looks for end-of-sequence; lengths are counted down for the whole batch, stop strings and listeners are
        looked at for the rows that have them, cancels and deadlines every CHECK_EVERY steps."""
        eng, p, rows = self.eng, self._params(), self.rows
        assert self.logits is not None
        logits = self.logits.float()
        u = None
        if "hot" in p:
            u = uniforms(p["seed"], torch.tensor([len(row.tokens) for row in rows], device=eng.device))
        if self._early_in > 0 and "hot" in p:  # end-of-sequence is suppressed for rows short of min_new_tokens
            self._suppress_eos(logits)
        tokens = sample(logits, p["temperature"], p["top_k"], p["top_p"], u)
        toks = tokens.tolist()
        if self._early_in > 0 and "hot" not in p and self._early_eos(toks):
            # all greedy: the argmax only changes for a row whose argmax is end-of-sequence, so suppress and
            # take it again only when such a row is still short of its min_new_tokens
            self._suppress_eos(logits)
            tokens = sample(logits, p["temperature"], p["top_k"], p["top_p"], None)
            toks = tokens.tolist()
        self._steps += 1
        self._early_in -= 1
        self._length_in -= 1
        ended: dict[int, str] = {}
        eos_ids = eng.eos_ids
        for i, (t, got) in enumerate(zip(toks, self._lists, strict=True)):
            if t in eos_ids and len(got) >= rows[i].req.min_new_tokens:
                ended[i] = "stop"
            else:
                got.append(t)
        for i in self._listening:
            r = rows[i].req
            if i not in ended and r.on_token is not None:
                try:
                    r.on_token(r.tokens)
                except Exception:  # noqa: BLE001 - a listener must never break the batch
                    log.exception("token listener failed")
        if self._length_in <= 0:
            for i, row in enumerate(rows):
                if i not in ended and len(row.tokens) >= row.req.max_new_tokens:
                    ended[i] = "length"
        for i in self._stopping:
            if ended.get(i) != "stop" and eng._stop_hit(rows[i].req, rows[i].tokens):
                ended[i] = "stop"
        for i, reason in ended.items():
            rows[i].req.future.set_result(eng._result(rows[i], reason))
        failed: list[int] = []
        if self._steps % CHECK_EVERY == 0:
            now = time.monotonic()
            for i, row in enumerate(rows):
                r = row.req
                if i in ended:
                    continue
                if r.cancel.is_set():
                    r.future.set_exception(JobFailure("cancelled", "cancelled while running",
                                                      output=eng._partial(row, "cancelled")))
                elif r.deadline < now:
                    r.future.set_exception(JobFailure("timeout", "the job ran past its timeout_s",
                                                      output=eng._partial(row, "timeout")))
                else:
                    continue
                failed.append(i)
        self.last = tokens
        finished = sorted([*ended, *failed])
        done = [rows[i] for i in finished]
        if finished:
            self._leave(finished)
        return done

    def _early_eos(self, toks: list[int]) -> bool:
        """Whether a row still short of its min_new_tokens drew end-of-sequence."""
        eos, rows = self.eng.eos_ids, self.rows
        if eos.isdisjoint(toks):
            return False
        return any(t in eos and len(rows[i].tokens) < rows[i].req.min_new_tokens for i, t in enumerate(toks))

    def _suppress_eos(self, logits: torch.Tensor) -> None:
        """End-of-sequence out of reach of the rows still short of their min_new_tokens."""
        eos = self.eng.eos_t
        early = torch.tensor([len(row.tokens) < row.req.min_new_tokens for row in self.rows], device=eos.device)
        logits[:, eos] = logits[:, eos].masked_fill(early[:, None], float("-inf"))

    def _leave(self, finished: list[int]) -> None:
        """Rows that ended leave: the last live rows move into their slots (only those rows' columns copied)."""
        gone = set(finished)
        n = len(self.rows) - len(finished)
        holes = [i for i in finished if i < n]
        movers = [i for i in range(n, len(self.rows)) if i not in gone]
        assert self.kv is not None and self.last is not None
        self._sync_pos()
        if movers:
            self.kv.move(movers, holes, max(self.rows[i].next_pos for i in movers))
        idx = list(range(n))
        for h, m in zip(holes, movers, strict=True):
            idx[h] = m
        self.rows = [self.rows[i] for i in idx]
        self.last = self.last[torch.tensor(idx, dtype=torch.long, device=self.last.device)]
        self._p = self._pos = None

    def decode(self) -> None:
        """One forward of every row's last token: each writes its key/value at its own column. The rows' columns
        stay a tensor between steps (rebuilt only when rows join or leave)."""
        eng = self.eng
        assert self.last is not None
        n = len(self.rows)
        if self._pos is None:
            self._sync_pos()
            self._pos = torch.tensor([row.next_pos for row in self.rows], device=eng.device)
            self._width = max(row.next_pos for row in self.rows) + 1
            self._adapters = [row.req.adapter for row in self.rows]
        pos_t, width, adapters = self._pos, self._width, self._adapters
        kv = self._cache(n, width)
        if eng.graphs is not None and not any(adapters):
            self.logits = eng.graphs.decode(kv, self.last, pos_t, width)
        else:
            allowed = kv.columns[None, :width] <= pos_t[:, None]
            kv.rows, kv.write, kv.width = slice(0, n), pos_t, width
            try:
                self.logits = eng.forward(adapters, input_ids=self.last[:, None], position_ids=pos_t[:, None],
                                          attention_mask=eng.masks(allowed[:, None, None]), cache=kv,
                                          use_cache=True).logits[:, -1, :]
            finally:
                kv.write = None
        pos_t += 1
        self._width += 1
        self._advanced += 1

    def _sync_pos(self) -> None:
        """Bring the rows' next_pos up to date with the decode steps since the columns' tensor was built."""
        if self._advanced:
            for row in self.rows:
                row.next_pos += self._advanced
            self._advanced = 0

    def fail_all(self, failure: JobFailure) -> None:
        for row in self.rows:
            if not row.req.future.done():
                row.req.future.set_exception(failure)


def _seed(seed: int | None) -> int:
    return seed if seed is not None else secrets.randbits(63)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _as_failure(exc: BaseException) -> JobFailure:
    if isinstance(exc, JobFailure):
        return exc
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return JobFailure("out_of_memory", "the GPU ran out of memory for this batch")
    log.exception("generation batch failed")
    return JobFailure("internal", f"generation failed: {exc.__class__.__name__}")
