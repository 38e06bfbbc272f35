"""The decode step without launch overhead on a GPU: one CUDA graph per (batch bucket, width bucket).

A step of n rows runs as the graph of the smallest power-of-two batch >= n (spare rows write into free slots,
column 0, and are ignored) over a power-of-two number of columns of the slot cache. Graphs point into the slot
cache's slabs, so they are dropped when the slabs grow. A captured graph is checked once against the eager
forward it replaces and graphs are turned off for good if they differ.

`capture=False` runs the same padded, bucketed step eagerly: what the tests run on a CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from workers.engines.kv import SlotCache

if TYPE_CHECKING:
    from workers.engines.generation import GenerationEngine

log = logging.getLogger(__name__)


@dataclass
class _Step:
    ids: torch.Tensor  # [b, 1]
    pos: torch.Tensor  # [b, 1]
    mask: Any  # [b, 1, 1, width] additive (or a dict of them per layer type)
    graph: Any = None  # torch.cuda.CUDAGraph once captured
    logits: torch.Tensor | None = None  # the graph's output [b, vocab]


class DecodeGraphs:
    def __init__(self, eng: GenerationEngine, *, capture: bool, min_width: int = 64) -> None:
        self.eng, self.capture, self.min_width = eng, capture, min_width
        self._steps: dict[tuple[int, int], _Step] = {}
        self.pool: Any = None
        self.captured = 0

    def reset(self) -> None:
        self._steps.clear()

    def decode(self, kv: SlotCache, last: torch.Tensor, pos: torch.Tensor, width: int) -> torch.Tensor:
        """Logits [n, vocab] of the next token of rows 0..n-1 (last tokens `last`, columns `pos`)."""
        n = last.shape[0]
        b = min(_pow2(n), kv.slots)
        w = min(max(self.min_width, _pow2(width)), kv.capacity)
        step = self._steps.get((b, w))
        fresh = step is None
        if step is None:
            dev = self.eng.device
            step = _Step(torch.full((b, 1), self.eng.pad_id, dtype=torch.long, device=dev),
                         torch.zeros((b, 1), dtype=torch.long, device=dev), None)
        step.ids[:n, 0] = last
        step.ids[n:] = self.eng.pad_id
        step.pos[:n, 0] = pos
        step.pos[n:] = 0
        allowed = torch.arange(w, device=pos.device)[None, :] <= step.pos
        mask = self.eng.masks(allowed[:, None, None])
        if step.mask is None:
            step.mask = mask
        else:
            _copy(step.mask, mask)
        if not self.capture:
            return self._run(kv, step, b, w)[:n]
        if fresh:
            self._steps[(b, w)] = step
            return self._capture(kv, step, b, w)[:n]
        assert step.graph is not None and step.logits is not None
        step.graph.replay()
        return step.logits[:n]

    def _run(self, kv: SlotCache, step: _Step, b: int, w: int) -> torch.Tensor:
        kv.rows, kv.write, kv.width = slice(0, b), step.pos[:, 0], w
        try:
            return self.eng.forward([None] * b, input_ids=step.ids, position_ids=step.pos, attention_mask=step.mask,
                                    cache=kv, use_cache=True).logits[:, -1, :]
        finally:
            kv.write = None

    def _capture(self, kv: SlotCache, step: _Step, b: int, w: int) -> torch.Tensor:
        """Warm up on a side stream, capture, replay once and compare with the eager result. Every run writes
        the same keys/values at the same columns (the real inputs are in place), so warm-up is harmless."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                eager = self._run(kv, step, b, w).clone()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._run(kv, step, b, w)
        except Exception:  # noqa: BLE001 - graphs are an optimisation: fall back to eager steps for good
            log.exception("engine=%s: CUDA graph capture failed; decoding eagerly", self.eng.name)
            self.eng.graphs = None
            return eager
        self.pool = graph.pool()
        graph.replay()
        if not torch.allclose(out.float(), eager.float(), atol=1e-2, rtol=1e-2):
            log.error("engine=%s: a CUDA graph's logits differ from eager ones; decoding eagerly", self.eng.name)
            self.eng.graphs = None
            return eager
        step.graph, step.logits = graph, out
        self.captured += 1
        return out


def _copy(dst: Any, src: Any) -> None:
    if isinstance(dst, dict):
        for k in dst:
            dst[k].copy_(src[k])
    else:
        dst.copy_(src)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
