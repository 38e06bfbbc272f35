"""Process-wide threading rules the engines share with the loaders and trainers (here so that engines need not
import the loaders)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Building a model is not thread-safe in transformers: from_pretrained patches module construction process-wide
# (empty-weight init on the meta device), so a model built in another thread at the same time can come out with
# meta tensors. Every build in a worker (cache loads, a trainer's copy, adapters, conversions) holds this lock.
BUILD_LOCK = threading.RLock()


def in_own_thread(fn: Callable[[], T], name: str = "llmos-torch") -> T:
    """Run `fn` (torch work outside an engine's thread: a model load, an adapter, a training run) in a thread that
    ends with it, and return its result or raise its exception here.

    On a CPU, torch's OpenMP runtime (libgomp) keeps a pool of helper threads for every thread that ever ran a
    parallel region, until that thread exits. Once the process holds more of them than there are cores, libgomp
    stops spinning between parallel regions and every operator pays a sleep/wake-up: a long-lived task thread
    that once loaded a model made each SmolLM2 decode step of the engine thread 84 -> 108 ms on 2 cores. A thread
    that exits takes its pool with it."""
    box: dict[str, object] = {}
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(fn)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
