"""The engine step: the vectorised sampler against the per-row reference, prefix caching, chunked and grouped
prefill, rows leaving mid-batch, and the bucketed (CUDA-graph shaped) decode, on the tiny random model."""

from __future__ import annotations

import pytest
import torch

from app.services.registry import TINY_LLAMA_CONFIG
from tests.conftest import MODEL_DIR
from workers.engines.generation import GenerationEngine, GenRequest
from workers.engines.graphs import DecodeGraphs
from workers.engines.sampling import sample, sample_row, uniforms
from workers.model_cache import ModelCache, ModelSpec

TINY = ModelSpec("tiny-random-llama", "causal-lm", "random", "llama", TINY_LLAMA_CONFIG)


def _params(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    temp = torch.tensor([0.0 if i % 5 == 0 else 0.4 + (i % 4) * 0.3 for i in range(n)])
    top_k = torch.tensor([0 if i % 2 else (i % 7) * 3 for i in range(n)])
    top_p = torch.tensor([1.0 if i % 3 else 0.75 for i in range(n)])
    return temp, top_k, top_p


def test_vectorised_sampler_equals_per_row_for_greedy_and_seeded_rows():
    gen = torch.Generator().manual_seed(0)
    n, vocab = 48, 500
    temp, top_k, top_p = _params(n)
    seeds = torch.arange(n, dtype=torch.long) * 7919 + 3
    for step in range(40):
        logits = torch.randn((n, vocab), generator=gen) * 3
        u = uniforms(seeds, torch.full((n,), step))
        got = sample(logits, temp, top_k, top_p, u).tolist()
        want = [sample_row(logits[i], float(temp[i]), int(top_k[i]), float(top_p[i]), float(u[i]))
                for i in range(n)]
        assert got == want
    # a row's draw depends on its seed and step only, not on the rows beside it
    u = uniforms(seeds, torch.full((n,), 5))
    alone = sample(logits[7:8], temp[7:8], top_k[7:8], top_p[7:8], u[7:8])
    assert int(alone) == sample(logits, temp, top_k, top_p, u)[7]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8),
                                                             (0.9, 6, 0.7)])
def test_unseeded_rows_follow_the_distribution(temperature, top_k, top_p):
    vocab, n = 12, 20000
    logits = torch.linspace(-2, 2, vocab)[torch.randperm(vocab, generator=torch.Generator().manual_seed(1))]
    x = logits / temperature
    if top_k:
        x = x.masked_fill(x < torch.topk(x, top_k).values[-1], float("-inf"))
    if top_p < 1:
        vals, order = x.sort(descending=True)
        probs = vals.softmax(-1)
        x = x.scatter(0, order[probs.cumsum(-1) - probs > top_p], float("-inf"))
    expected = x.softmax(-1)
    seeds = torch.randint(0, 2**62, (n,), generator=torch.Generator().manual_seed(2))  # as the engine draws them
    tokens = sample(logits.expand(n, -1), torch.full((n,), temperature), torch.full((n,), top_k),
                    torch.full((n,), top_p), uniforms(seeds, torch.zeros(n, dtype=torch.long)))
    freq = torch.bincount(tokens, minlength=vocab).double() / n
    assert float((freq - expected.double()).abs().sum()) / 2 < 0.02  # total variation distance
    assert bool((freq[expected == 0] == 0).all())  # nothing outside top-k / top-p


@pytest.fixture(scope="module")
def loaded():
    c = ModelCache(model_dir=MODEL_DIR, device="cpu", budget_bytes=2**30, max_batch=64)
    yield c.get(TINY)
    c.close()


def ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer(text)["input_ids"]


def engine(loaded, **kw) -> GenerationEngine:
    return GenerationEngine(loaded.model, loaded.tokenizer, device="cpu", max_batch=kw.pop("max_batch", 64), **kw)


def run_all(eng: GenerationEngine, reqs: list[GenRequest]) -> list[tuple[str, int]]:
    try:
        return [(r.text, r.completion_tokens) for r in [f.result(timeout=120) for f in [eng.submit(q) for q in reqs]]]
    finally:
        eng.stop()


def mixed(loaded, prompts: list[str]) -> list[GenRequest]:
    """Greedy and seeded sampled requests of varied lengths (rows leave at different steps)."""
    return [GenRequest(ids(loaded, p), max_new_tokens=4 + i % 9, min_new_tokens=4 + i % 9,
                       temperature=0.0 if i % 2 else 0.9, top_k=0 if i % 3 else 20, top_p=1.0 if i % 4 else 0.9,
                       seed=None if i % 2 else i) for i, p in enumerate(prompts)]


INSTRUCTION = "Summarise the following document in one sentence, keeping names and numbers exact. " * 4
DOCS = [INSTRUCTION + f"Document {i}: " + "lorem ipsum dolor " * (i % 5) for i in range(20)]


def test_prefix_cache_gives_the_same_outputs(loaded):
    plain = run_all(engine(loaded, prefix_cache_bytes=0), mixed(loaded, DOCS))
    cached_eng = engine(loaded)
    store = cached_eng.prefix
    assert store is not None
    first = [cached_eng.submit(r) for r in mixed(loaded, DOCS)]  # arrivals that share the instruction
    with_prefix = [(r.text, r.completion_tokens) for r in [f.result(timeout=120) for f in first]]
    again = run_all(cached_eng, mixed(loaded, DOCS))  # later arrivals: the stored prefix
    assert with_prefix == plain and again == plain
    assert store.hits >= 2 * len(DOCS)
    assert store.tokens_saved >= 2 * len(DOCS) * (len(ids(loaded, INSTRUCTION)) - store.block)


def test_chunked_and_grouped_prefill_give_the_same_outputs(loaded):
    prompts = [f"{i} " + "a long prompt for chunking " * (3 + 4 * (i % 4)) for i in range(12)]
    whole = run_all(engine(loaded, prefix_cache_bytes=0), mixed(loaded, prompts))
    eng = engine(loaded, prefix_cache_bytes=0, prefill_chunk=32, prefill_tokens=256)
    assert run_all(eng, mixed(loaded, prompts)) == whole
    assert eng.prefill_forwards > len(prompts)  # chunks of 32 columns, groups within 256 tokens
    one = engine(loaded, prefix_cache_bytes=0)
    assert run_all(one, mixed(loaded, prompts)) == whole
    assert one.batches <= 2 and one.prefill_forwards <= 4  # arrivals prefilled together, not one by one


def test_rows_leaving_mid_batch_equal_rows_alone(loaded):
    reqs = mixed(loaded, DOCS[:12])
    alone = []
    for r in mixed(loaded, DOCS[:12]):
        alone += run_all(engine(loaded, prefix_cache_bytes=0), [r])
    assert run_all(engine(loaded, prefix_cache_bytes=0, max_batch=5), reqs) == alone


def test_bucketed_graph_shaped_decode_equals_plain(loaded):
    plain = run_all(engine(loaded), mixed(loaded, DOCS))
    eng = engine(loaded, cuda_graphs=False)
    eng.graphs = DecodeGraphs(eng, capture=False, min_width=8)  # the GPU path's shapes, run eagerly
    assert run_all(eng, mixed(loaded, DOCS)) == plain
