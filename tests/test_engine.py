"""The generation engine on the tiny random model: shared batches, per-request parameters, stop, cancel."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.services.registry import TINY_LLAMA_CONFIG
from tests.conftest import MODEL_DIR
from workers.engines.generation import GenRequest
from workers.errors import JobFailure
from workers.model_cache import ModelCache, ModelSpec

TINY = ModelSpec("tiny-random-llama", "causal-lm", "random", "llama", TINY_LLAMA_CONFIG)


@pytest.fixture(scope="module")
def cache():
    c = ModelCache(model_dir=MODEL_DIR, device="cpu", budget_bytes=2**30, max_batch=64)
    yield c
    c.close()


@pytest.fixture(scope="module")
def loaded(cache):
    return cache.get(TINY)


def ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer(text)["input_ids"]


PROMPTS = [f"document {i}: " + "lorem ipsum " * (i % 7) for i in range(24)]


def test_cache_hit_is_the_same_object(cache, loaded):
    before = cache.hits
    assert cache.get(TINY) is loaded
    assert cache.hits == before + 1
    assert cache.cold_loads == 1


def test_batched_greedy_equals_alone(loaded):
    eng = loaded.engine
    alone = [eng.generate(GenRequest(ids(loaded, p), max_new_tokens=12, temperature=0.0)).text for p in PROMPTS]
    batches_before = eng.batches
    futures = [eng.submit(GenRequest(ids(loaded, p), max_new_tokens=12, temperature=0.0)) for p in PROMPTS]
    together = [f.result(timeout=60) for f in futures]
    assert [r.text for r in together] == alone
    # concurrent requests shared forward passes: far fewer batches than requests
    assert eng.batches - batches_before < len(PROMPTS) / 2
    assert max(r.batch_size for r in together) > 1


def test_per_request_params_in_one_batch(loaded):
    eng = loaded.engine
    p = ids(loaded, "hello there")
    reqs = [
        GenRequest(p, max_new_tokens=3, temperature=0.0),
        GenRequest(p, max_new_tokens=9, temperature=0.0),
        GenRequest(p, max_new_tokens=20, temperature=1.0, seed=7),
        GenRequest(p, max_new_tokens=20, temperature=1.0, seed=7),
        GenRequest(p, max_new_tokens=20, temperature=0.8, top_k=5, top_p=0.9, seed=8),
    ]
    res = [f.result(timeout=60) for f in [eng.submit(r) for r in reqs]]
    assert res[0].completion_tokens <= 3 and res[1].completion_tokens <= 9
    assert res[1].text.startswith(res[0].text)
    assert res[2].text == res[3].text  # same seed, same sample, even side by side in one batch
    seeded_alone = eng.generate(GenRequest(p, max_new_tokens=20, temperature=1.0, seed=7))
    assert seeded_alone.text == res[2].text


def test_stop_string_cuts_the_text(loaded):
    eng = loaded.engine
    p = ids(loaded, "abc")
    full = eng.generate(GenRequest(p, max_new_tokens=16, temperature=0.0))
    assert full.completion_tokens >= 4, "tiny model stopped too early for this test"
    stop = full.text[2:4]
    cut = eng.generate(GenRequest(p, max_new_tokens=16, temperature=0.0, stop=[stop]))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


def test_cancel_one_request_leaves_the_others(loaded):
    eng = loaded.engine
    p = ids(loaded, "cancel me")
    victim = GenRequest(p, max_new_tokens=2000, temperature=0.0)
    others = [GenRequest(ids(loaded, q), max_new_tokens=12, temperature=0.0) for q in PROMPTS[:6]]
    expected = [eng.generate(GenRequest(ids(loaded, q), max_new_tokens=12, temperature=0.0)).text
                for q in PROMPTS[:6]]
    vf = eng.submit(victim)
    ofs = [eng.submit(r) for r in others]
    threading.Timer(0.2, victim.cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(JobFailure) as err:
        vf.result(timeout=30)
    assert err.value.code == "cancelled"
    assert time.monotonic() - t0 < 5
    assert [f.result(timeout=30).text for f in ofs] == expected


def test_timeout_between_steps(loaded):
    req = GenRequest(ids(loaded, "slow"), max_new_tokens=4000, temperature=0.0, deadline=time.monotonic() + 0.3)
    with pytest.raises(JobFailure) as err:
        loaded.engine.generate(req)
    assert err.value.code == "timeout"
    # the engine keeps serving
    assert loaded.engine.generate(GenRequest(ids(loaded, "next"), max_new_tokens=2, temperature=0.0))


def test_concurrent_threads_like_celery_pool(loaded):
    with ThreadPoolExecutor(16) as pool:
        res = list(pool.map(lambda p: loaded.engine.generate(GenRequest(ids(loaded, p), max_new_tokens=8,
                                                                        temperature=0.0)), PROMPTS))
    assert len(res) == len(PROMPTS) and all(r.completion_tokens <= 8 for r in res)


def test_short_request_joins_a_running_batch_and_leaves_first(loaded):
    eng = loaded.engine
    short_alone = eng.generate(GenRequest(ids(loaded, "short one"), max_new_tokens=6, min_new_tokens=6,
                                          temperature=0.0))
    long_req = GenRequest(ids(loaded, "a much longer prompt that runs for a while"), max_new_tokens=1500,
                          min_new_tokens=1500, temperature=0.0)
    long_f = eng.submit(long_req)
    time.sleep(0.3)  # the long request is decoding alone now
    assert not long_f.done()
    short = eng.generate(GenRequest(ids(loaded, "short one"), max_new_tokens=6, min_new_tokens=6, temperature=0.0))
    assert not long_f.done(), "the short request waited for the long one instead of joining its batch"
    assert short.text == short_alone.text and short.batch_size == 2
    long_res = long_f.result(timeout=120)
    assert long_res.completion_tokens == 1500
    alone = eng.generate(GenRequest(long_req.prompt_ids, max_new_tokens=1500, min_new_tokens=1500, temperature=0.0))
    assert long_res.text == alone.text  # joining and leaving did not disturb the long row


def os_threads() -> int:
    """Threads of this process that Python did not start (OpenMP's helpers among them)."""
    import os

    python = {t.native_id for t in threading.enumerate()}
    return len({int(t) for t in os.listdir("/proc/self/task")} - python)


def settled(target: int) -> int:
    deadline = time.monotonic() + 5
    while os_threads() > target and time.monotonic() < deadline:
        time.sleep(0.01)
    return os_threads()


def test_torch_work_off_the_engine_thread_leaves_no_openmp_pool_behind():
    """A model load (or a training run) in a long-lived task thread would leave that thread's OpenMP helper
    threads behind, and with more of them than cores every operator of the engine thread pays a wake-up.
    in_own_thread runs the work in a thread that takes its pool with it."""
    import torch

    from workers.engines.locks import in_own_thread

    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: OpenMP keeps no helper threads")

    def work() -> float:
        return float(torch.ones(1 << 22).sin().sum())

    expected = work()  # in this thread: its own pool, if any, exists from here on
    before = os_threads()
    assert in_own_thread(work) == expected
    assert in_own_thread(work) == expected
    assert settled(before) == before  # the helpers are told to exit as the thread ends; they go soon after

    with pytest.raises(ValueError, match="boom"):
        in_own_thread(lambda: (_ for _ in ()).throw(ValueError("boom")))

    # the contrast: the same work in a thread that stays alive leaves its helpers running
    done, release = threading.Event(), threading.Event()

    def long_lived() -> None:
        work()
        done.set()
        release.wait(10)

    t = threading.Thread(target=long_lived)
    mid = settled(before)
    t.start()
    done.wait(10)
    time.sleep(0.2)
    assert os_threads() >= mid + 1  # its OpenMP helper(s), still there
    release.set()
    t.join()
