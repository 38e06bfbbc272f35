"""The running batch's KV cache as slots, and the store of shared prompt prefixes.

`SlotCache`: per layer one preallocated slab [slots, kv_heads, capacity, head_dim] for keys and one for values.
Row i of the batch lives in slot i with its tokens at columns 0..len-1 (position = column), so a decode step
writes each row's new key at its own column (one indexed store per layer, no concatenation), a row that ends is
replaced by the last row (only that row's columns copied), and an arrival is prefilled straight into a free
slot. The slab grows by doubling (rarely); attention sees columns 0..width-1 through a view, masked per row.
The model calls `update(keys, values, layer_idx)` as it would on a transformers cache.

`PrefixStore`: the keys and values of prompt prefixes that more than one request has shown, in blocks of
`block` tokens, keyed by a hash chain over the blocks (and the adapter: a LoRA changes the keys). Bounded in
bytes, least recently used out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch


class SlotCache:
    def __init__(self, *, layers: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 slots: int, capacity: int) -> None:
        self.layers, self.heads, self.head_dim, self.dtype, self.device = layers, heads, head_dim, dtype, device
        self.keys = [self._new(slots, capacity) for _ in range(layers)]
        self._slots = torch.arange(slots, device=device)  # slot numbers, sliced for a decode's rows
        self.columns = torch.arange(capacity, device=device)  # column numbers, for masks
        self.values = [self._new(slots, capacity) for _ in range(layers)]
        # what the next forward reads and writes (set by the engine)
        self.rows = slice(0, 0)
        self.write: torch.Tensor | None = None  # decode: the column each row writes
        self.start = 0  # prefill: the first column written
        self.width = 0  # decode: the columns attention sees

    @classmethod
    def for_model(cls, config: Any, *, dtype: torch.dtype, device: torch.device, slots: int,
                  capacity: int) -> SlotCache:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(layers=cfg.num_hidden_layers, heads=heads, head_dim=head_dim, dtype=dtype, device=device,
                   slots=slots, capacity=capacity)

    def _new(self, slots: int, capacity: int) -> torch.Tensor:
        return torch.zeros((slots, self.heads, capacity, self.head_dim), dtype=self.dtype, device=self.device)

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def ensure(self, slots: int, capacity: int) -> bool:
        """Grow (doubling) to hold `slots` rows of `capacity` columns; True when the slabs were reallocated."""
        if slots <= self.slots and capacity <= self.capacity:
            return False
        new_slots, new_cap = self.slots, self.capacity
        while new_slots < slots:
            new_slots *= 2
        while new_cap < capacity:
            new_cap *= 2
        for slab in (self.keys, self.values):
            for i, old in enumerate(slab):
                grown = self._new(new_slots, new_cap)
                grown[: old.shape[0], :, : old.shape[2]] = old
                slab[i] = grown
        self._slots = torch.arange(new_slots, device=self.device)
        self.columns = torch.arange(new_cap, device=self.device)
        return True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if self.write is not None:  # decode: one new token per row, each at its own column
            rows = self._slots[self.rows]
            k[rows, :, self.write] = key_states[:, :, 0]
            v[rows, :, self.write] = value_states[:, :, 0]
            return k[self.rows, :, : self.width], v[self.rows, :, : self.width]
        end = self.start + key_states.shape[2]  # prefill: a block of columns for a run of slots
        k[self.rows, :, self.start : end] = key_states
        v[self.rows, :, self.start : end] = value_states
        return k[self.rows, :, :end], v[self.rows, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    def move(self, src: list[int], dst: list[int], width: int) -> None:
        """Copy rows src -> dst (columns 0..width-1): the last rows filling the slots of rows that ended."""
        if not src:
            return
        s = torch.tensor(src, device=self.device)
        d = torch.tensor(dst, device=self.device)
        for slab in (self.keys, self.values):
            for t in slab:
                t[d, :, :width] = t[s, :, :width]

    def load(self, slots: list[int], kv: PrefixKV) -> None:
        """Put a stored prefix into columns 0..len-1 of these slots."""
        idx = torch.tensor(slots, device=self.device)
        n = kv.keys.shape[2]
        for layer in range(self.layers):
            self.keys[layer][idx, :, :n] = kv.keys[layer].unsqueeze(0)
            self.values[layer][idx, :, :n] = kv.values[layer].unsqueeze(0)

    def save(self, slot: int, length: int) -> PrefixKV:
        return PrefixKV(torch.stack([k[slot, :, :length] for k in self.keys]),
                        torch.stack([v[slot, :, :length] for v in self.values]))


@dataclass(frozen=True)
class PrefixKV:
    keys: torch.Tensor  # [layers, heads, length, head_dim]
    values: torch.Tensor

    @property
    def bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


class PrefixStore:
    def __init__(self, *, budget_bytes: int, block: int = 32, max_seen: int = 65536) -> None:
        self.budget_bytes, self.block, self.max_seen = budget_bytes, block, max_seen
        self._kv: OrderedDict[tuple[Hashable, int], tuple[tuple[int, ...], PrefixKV]] = OrderedDict()
        self._seen: OrderedDict[tuple[Hashable, int], int] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.tokens_saved = 0

    def chain(self, ids: list[int]) -> list[int]:
        """Hashes of the prompt's whole-block prefixes, leaving at least one token to prefill."""
        out, h = [], 0
        for end in range(self.block, len(ids), self.block):
            h = hash((h, tuple(ids[end - self.block : end])))
            out.append(h)
        return out

    def note(self, key: Hashable, chain: list[int]) -> int:
        """Count a request's prefixes as seen; the number of blocks in its longest prefix seen before."""
        shared = 0
        for n, h in enumerate(chain, 1):
            count = self._seen.pop((key, h), 0) + 1
            self._seen[(key, h)] = count
            if count > 1:
                shared = n
        while len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)
        return shared

    def find(self, key: Hashable, chain: list[int], ids: list[int]) -> PrefixKV | None:
        """The longest stored prefix of this prompt."""
        for n in range(len(chain), 0, -1):
            hit = self._kv.get((key, chain[n - 1]))
            if hit is not None and list(hit[0]) == ids[: n * self.block]:
                self._kv.move_to_end((key, chain[n - 1]))
                return hit[1]
        return None

    def has(self, key: Hashable, h: int) -> bool:
        return (key, h) in self._kv

    def put(self, key: Hashable, h: int, ids: list[int], kv: PrefixKV) -> None:
        if kv.bytes > self.budget_bytes or (key, h) in self._kv:
            return
        self._kv[(key, h)] = (tuple(ids), kv)
        self.bytes += kv.bytes
        while self.bytes > self.budget_bytes:
            _, (_, old) = self._kv.popitem(last=False)
            self.bytes -= old.bytes

    def clear(self) -> None:
        self._kv.clear()
        self._seen.clear()
        self.bytes = 0
