"""Next-token sampling for a whole batch in a few tensor ops, each row with its own temperature, top-k, top-p and
random stream.

A row's randomness is counter-based: its uniform draw at step t is a hash of (seed, t), so a seeded row gives
the same tokens alone, beside any other rows, or on another batch size, and no per-row generator is stepped.
Sampling is by inverse CDF over the kept tokens (cumulative sums are exact per row whatever the batch).
`sample_row` is the plain one-row reference the tests hold the batch version to.
"""

from __future__ import annotations

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def uniforms(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One float64 in [0, 1) per row, a function of (seed, step) only."""
    x = _mix(_mix(seeds) + steps * _GOLDEN)
    return _shr(x, 11).double() * (1.0 / (1 << 53))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           u: torch.Tensor | None) -> torch.Tensor:
    """Token per row of `logits` [n, V]. temperature 0 is greedy; top_k 0 and top_p 1 mean no cut; `u` [n] are the
    rows' uniforms (None only when every row is greedy). Rows without a cut sample over the unsorted vocabulary;
    rows with one over a sorted candidate list (the top max(top_k) when every cut row has a top_k, else the whole
    sorted vocabulary)."""
    tokens = logits.argmax(dim=-1)
    if u is None:
        return tokens
    hot = temperature > 0
    if not bool(hot.any()):
        return tokens
    cut = hot & ((top_k > 0) | (top_p < 1.0))
    plain = hot & ~cut
    x = logits.float() / torch.where(hot, temperature, 1.0).to(torch.float32)[:, None]
    if bool(plain.any()):
        rows = plain.nonzero().squeeze(1)
        xr = x.index_select(0, rows)
        cdf = (xr - xr.max(dim=-1, keepdim=True).values).exp().cumsum(-1)
        idx = torch.searchsorted(cdf, (u[rows] * cdf[:, -1].double()).to(cdf.dtype)[:, None], right=True)
        tokens[rows] = idx.squeeze(1).clamp(max=x.shape[1] - 1)
    if bool(cut.any()):
        rows = cut.nonzero().squeeze(1)
        xr, k = x.index_select(0, rows), top_k[rows]
        vocab = xr.shape[1]
        if bool((k > 0).all()):
            vals, order = xr.topk(min(int(k.max()), vocab), dim=-1)
        else:
            vals, order = xr.sort(dim=-1, descending=True)
        e = (vals - vals[:, :1]).exp()
        cdf = e.cumsum(-1)
        width = vals.shape[1]
        keep = torch.where(k > 0, k.clamp(max=width), width)
        total = cdf.gather(1, (keep - 1)[:, None])
        within_p = ((cdf - e) <= top_p[rows].to(cdf.dtype)[:, None] * total).sum(-1)
        keep = torch.minimum(keep, within_p.clamp(min=1))
        mass = cdf.gather(1, (keep - 1)[:, None]).squeeze(1)
        idx = torch.searchsorted(cdf, (u[rows] * mass.double()).to(cdf.dtype)[:, None], right=True).squeeze(1)
        idx = torch.minimum(idx, keep - 1)
        tokens[rows] = order.gather(1, idx[:, None]).squeeze(1)
    return tokens


def sample_row(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, u: float) -> int:
    """The reference for one row [V], written plainly: temperature, then top-k, then top-p over what top-k kept,
    then the token where the cumulative probability (in descending order if anything was cut) passes u."""
    if temperature == 0:
        return int(logits.argmax())
    x = logits.float() / temperature
    if top_k:
        kth = torch.topk(x, min(top_k, x.numel())).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        vals, order = torch.sort(x, descending=True)
        probs = vals.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        x = x.scatter(0, order[drop], float("-inf"))
    probs = x.double().softmax(-1)
    cut = bool(top_k) or top_p < 1.0
    order = torch.sort(probs, descending=True, stable=True).indices if cut else torch.arange(probs.numel())
    cdf = probs[order].cumsum(-1)
    last = int((probs > 0).sum()) - 1 if cut else probs.numel() - 1
    i = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=cdf.dtype), right=True))
    return int(order[min(i, last)])
