"""Fine-tuned encoders at serving time: text classification (labels with probabilities) and named-entity
recognition (entities with type, text and character offsets).

Texts are split into words the same way for training data and for serving (`words`: runs of letters/digits, and
each punctuation mark alone), so a token-classification model sees at serving time the words it was trained on.
A model predicts one BIO tag per word (from the word's first sub-word token); consecutive words of one type make
an entity.

One engine thread per model: every request waiting when it wakes (one job's text, a batch chunk's texts, other
jobs' texts) goes through the model together, in padded batches of at most `max_batch` texts.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from concurrent.futures import Future
from typing import Any

import torch

log = logging.getLogger(__name__)

WORD = re.compile(r"\w+|[^\w\s]")
KINDS = ("classifier", "token-classifier")  # registry kinds this engine serves


def words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) character spans: what a token-classification model tags."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def bio_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) for each entity of a BIO sequence; an I- tag that does not continue an
    entity of its type starts one (as conlleval reads it)."""
    spans: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        prefix, kind = tag[:2], tag[2:]
        if prefix == "I-" and spans and spans[-1][0] == kind and spans[-1][2] == i:
            spans[-1] = (kind, spans[-1][1], i + 1)
        else:
            spans.append((kind, i, i + 1))
    return spans


class EncoderEngine:
    """A sequence- or token-classification model behind one thread that batches what is waiting."""

    def __init__(self, model: Any, tokenizer: Any, *, kind: str, device: str, max_batch: int = 64,
                 max_length: int = 512, name: str = "") -> None:
        assert kind in KINDS
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.device = torch.device(device)
        self.max_batch, self.max_length, self.name = max_batch, max_length, name
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self._queue: queue.Queue[tuple[list[str], Future[list[Any]]] | None] = queue.Queue()
        self._busy = 0
        self._thread = threading.Thread(target=self._loop, name=f"encoder-{name}", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        return self._busy == 0 and self._queue.empty()

    def stop(self) -> None:
        self._queue.put(None)

    # ---- what jobs call (from their own threads)

    def classify(self, texts: list[str]) -> list[dict[str, float]]:
        """Each text's probability for every label, highest first."""
        if self.kind != "classifier":
            raise ValueError(f"model {self.name!r} is a token classifier, not a text classifier")
        return self._submit(texts)

    def entities(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """Each text's entities: {"type", "text", "start", "end", "score"}, in order of appearance."""
        if self.kind != "token-classifier":
            raise ValueError(f"model {self.name!r} is a text classifier, not a token classifier")
        return self._submit(texts)

    def _submit(self, texts: list[str]) -> list[Any]:
        if not texts:
            return []
        fut: Future[list[Any]] = Future()
        self._queue.put((texts, fut))
        return fut.result()

    # ---- the engine thread

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            work, n = [first], len(first[0])
            while n < self.max_batch:  # everything else already waiting joins this pass
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                work.append(more)
                n += len(more[0])
            self._busy += 1
            try:
                results = self._run([t for texts, _ in work for t in texts])
            except Exception as exc:  # the requests fail, the engine goes on
                log.exception("model=%s encoder pass failed", self.name)
                for _, fut in work:
                    fut.set_exception(exc)
                continue
            finally:
                self._busy -= 1
            at = 0
            for texts, fut in work:
                fut.set_result(results[at:at + len(texts)])
                at += len(texts)

    @torch.inference_mode()
    def _run(self, texts: list[str]) -> list[Any]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        out: list[Any] = [None] * len(texts)
        for start in range(0, len(order), self.max_batch):
            idx = order[start:start + self.max_batch]
            part = [texts[i] for i in idx]
            results = self._classify(part) if self.kind == "classifier" else self._tag(part)
            for i, r in zip(idx, results, strict=True):
                out[i] = r
        return out

    def _forward(self, enc: Any) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(**enc.to(self.device)).logits.float().softmax(-1).cpu()

    def _classify(self, texts: list[str]) -> list[dict[str, float]]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        probs = self._forward(enc)
        out = []
        for row in probs.tolist():
            ranked = sorted(zip(self.labels, row, strict=True), key=lambda lp: -lp[1])
            out.append({label: round(p, 6) for label, p in ranked})
        return out

    def _tag(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        spans = [words(t) for t in texts]
        enc = self.tokenizer([[w for w, _, _ in s] for s in spans], is_split_into_words=True, padding=True,
                             truncation=True, max_length=self.max_length, return_tensors="pt")
        probs = self._forward(enc)
        out = []
        for b, (text, ws) in enumerate(zip(texts, spans, strict=True)):
            tags, scores = ["O"] * len(ws), [1.0] * len(ws)
            seen = set()
            for pos, w in enumerate(enc.word_ids(b)):
                if w is None or w in seen:
                    continue  # special tokens, and the later pieces of a word
                seen.add(w)
                p, label = probs[b, pos].max(-1)
                tags[w], scores[w] = self.labels[int(label)], float(p)
            ents = []
            for kind, first, last in bio_spans(tags):
                start, end = ws[first][1], ws[last - 1][2]
                ents.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                             "score": round(sum(scores[first:last]) / (last - first), 6)})
            out.append(ents)
        return out
