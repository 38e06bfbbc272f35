"""Loaded models, least recently used first out, within a memory budget. A hit costs nothing."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from app.models import ModelEntry
from workers import loaders
from workers.engines.embedding import EmbeddingEngine
from workers.engines.encoder import EncoderEngine
from workers.engines.generation import GenerationEngine
from workers.engines.locks import in_own_thread
from workers.errors import JobFailure

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """What the cache needs of a registry entry (read from the database, then the session is closed).
    A fine-tuned model is an adapter (source: its directory) on `base`."""

    name: str
    kind: str
    source_type: str
    source: str
    config: dict[str, Any]
    base: ModelSpec | None = None


def spec_for(session: Session, name: str) -> ModelSpec | None:
    entry = session.get(ModelEntry, name)
    if entry is None:
        return None
    base = None
    if entry.base_model is not None:
        base = spec_for(session, entry.base_model)
        if base is None:
            return None
    return ModelSpec(entry.name, entry.kind, entry.source_type, entry.adapter_path or entry.source,
                     dict(entry.config), base)


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    engine: GenerationEngine | EmbeddingEngine | EncoderEngine
    bytes: int
    load_seconds: float
    max_positions: int | None
    adapter: str | None = None  # set on the view of a fine-tuned model: the adapter's key on the base engine
    adapters: dict[str, str] = field(default_factory=dict)  # fine-tuned model name -> adapter key (bases only)


class ModelCache:
    def __init__(self, *, model_dir: Path, device: str, budget_bytes: int, max_batch: int) -> None:
        self.model_dir = model_dir
        self.device = device
        self.budget_bytes = budget_bytes
        self.max_batch = max_batch
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # concurrent requests for one cold model wait for its one load
        self.hits = 0
        self.cold_loads = 0

    def names(self) -> list[str]:
        with self._lock:
            return [n for name, m in self._models.items() for n in (name, *m.adapters)]

    def get(self, spec: ModelSpec) -> LoadedModel:
        if spec.base is not None and spec.kind == "causal-lm":  # fine-tuned encoders are whole models
            return self._get_adapter(spec)
        with self._lock:
            hit = self._models.get(spec.name)
            if hit is not None:
                self._models.move_to_end(spec.name)
                self.hits += 1
                return hit
        with self._load_lock:  # concurrent requests for a cold model wait for its one load
            with self._lock:
                if spec.name in self._models:
                    return self._models[spec.name]
            loaded = self._load(spec)
            with self._lock:
                self._models[spec.name] = loaded
                self.cold_loads += 1
                self._evict_over_budget(keep=spec.name)
            return loaded

    def _get_adapter(self, spec: ModelSpec) -> LoadedModel:
        """A fine-tuned model: its base (loaded once for all of its adapters) with the adapter loaded onto it."""
        assert spec.base is not None
        base = self.get(spec.base)
        with self._load_lock:
            key = base.adapters.get(spec.name)
            if key is None:
                if not isinstance(base.engine, GenerationEngine):
                    raise JobFailure("invalid_input", f"model {spec.name!r}: its base cannot generate text")
                key = f"ft{len(base.adapters)}"
                t0 = time.monotonic()
                try:
                    base.engine.add_adapter(key, spec.source)
                except (OSError, ValueError) as exc:
                    raise JobFailure("model_not_found", f"model {spec.name!r}: its adapter at {spec.source} "
                                     f"could not be loaded: {exc}") from None
                with self._lock:
                    base.adapters[spec.name] = key
                    self.cold_loads += 1
                log.info("model=%s adapter %s loaded onto %s in %.2fs", spec.name, key, base.name,
                         time.monotonic() - t0)
        return replace(base, name=spec.name, adapter=key)

    def _load(self, spec: ModelSpec) -> LoadedModel:
        return in_own_thread(lambda: self._build(spec), name=f"llmos-load-{spec.name}")

    def _build(self, spec: ModelSpec) -> LoadedModel:
        t0 = time.monotonic()
        path = loaders.materialise(name=spec.name, source_type=spec.source_type, source=spec.source,
                                   config=spec.config, model_dir=self.model_dir)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        auto = {"embedding": AutoModel, "classifier": AutoModelForSequenceClassification,
                "token-classifier": AutoModelForTokenClassification}.get(spec.kind, AutoModelForCausalLM)
        try:
            with loaders.BUILD_LOCK:
                tokenizer = AutoTokenizer.from_pretrained(path)
                model = auto.from_pretrained(path, dtype=dtype).to(self.device).eval()
        except torch.cuda.OutOfMemoryError:
            raise JobFailure("out_of_memory", f"model {spec.name!r} does not fit in GPU memory") from None
        except OSError as exc:
            raise JobFailure("model_not_found", f"model {spec.name!r} could not be loaded: {exc}") from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        size += sum(b.numel() * b.element_size() for b in model.buffers())
        seconds = time.monotonic() - t0
        log.info("model=%s cold load %.1fs %.0f MB on %s", spec.name, seconds, size / 1e6, self.device)
        max_pos = getattr(model.config, "max_position_embeddings", None)
        engine: GenerationEngine | EmbeddingEngine | EncoderEngine
        if spec.kind in ("classifier", "token-classifier"):
            engine = EncoderEngine(model, tokenizer, kind=spec.kind, device=self.device, max_batch=self.max_batch,
                                   max_length=min(max_pos or 512, 512), name=spec.name)
        elif spec.kind == "embedding":
            engine = EmbeddingEngine(model, tokenizer, device=self.device, max_batch=self.max_batch,
                                     max_length=min(max_pos or 512, 512), name=spec.name)
        else:
            engine = GenerationEngine(model, tokenizer, device=self.device, max_batch=self.max_batch,
                                      name=spec.name)
        return LoadedModel(spec.name, model, tokenizer, engine, size, seconds, max_pos)

    def _evict_over_budget(self, keep: str) -> None:
        total = sum(m.bytes for m in self._models.values())
        for name in list(self._models):
            if total <= self.budget_bytes:
                break
            m = self._models[name]
            if name == keep or not m.engine.idle:
                continue
            del self._models[name]
            m.engine.stop()
            total -= m.bytes
            log.info("model=%s evicted (LRU, budget %.0f MB)", name, self.budget_bytes / 1e6)
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def close(self) -> None:
        with self._lock:
            for m in self._models.values():
                m.engine.stop()
            self._models.clear()
