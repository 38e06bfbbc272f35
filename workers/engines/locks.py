"""Process-wide locks the engines share with the loaders (here so that engines need not import the loaders)."""

from __future__ import annotations

import threading

# Building a model is not thread-safe in transformers: from_pretrained patches module construction process-wide
# (empty-weight init on the meta device), so a model built in another thread at the same time can come out with
# meta tensors. Every build in a worker (cache loads, a trainer's copy, adapters, conversions) holds this lock.
BUILD_LOCK = threading.RLock()
