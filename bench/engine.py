"""The generation engine in process, beside baselines measured in the same run (interleaved, medians).

    python bench/engine.py                      # all three, CPU sizes
    python bench/engine.py --only overhead --rows 64 --new-tokens 64
    python bench/engine.py --only throughput --jobs 32 --new-tokens 32
    python bench/engine.py --only prefix --docs 500 --instruction-tokens 300

overhead:   tiny random llama, `--rows` requests at once: share of the engine's time (from its first forward pass to
            the last result; not the submits before it) outside the model's forward passes, ms per decode step;
            this engine vs the engine before it (`--baseline-rev`, loaded from git).
throughput: SmolLM2-135M (real weights), `--jobs` prompts at once: tokens/s of this engine, the previous
            engine and one padded `model.generate` over the same prompts.
prefix:     `--docs` documents behind one shared ~`--instruction-tokens` instruction (a batch template),
            `--new-tokens-prefix` tokens each: wall time with the prefix store vs without.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.services.registry import SEEDS, TINY_LLAMA_CONFIG  # noqa: E402
from workers.engines.generation import GenerationEngine, GenRequest  # noqa: E402
from workers.engines.locks import in_own_thread  # noqa: E402
from workers.model_cache import ModelCache, ModelSpec  # noqa: E402


def old_engine_class(rev: str) -> Any:
    src = subprocess.run(["git", "show", f"{rev}:workers/engines/generation.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_generation.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_generation", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_generation"] = mod
    spec.loader.exec_module(mod)
    return mod


def timed_forward(eng: Any) -> tuple[list[float], list[float]]:
    """Wrap the engine's forward so that each call's seconds are recorded, and when each began."""
    spent: list[float] = []
    began: list[float] = []
    inner = eng.forward

    def forward(adapters: list, **inputs: Any) -> Any:
        t = time.perf_counter()
        out = inner(adapters, **inputs)
        began.append(t)
        spent.append(time.perf_counter() - t)
        return out

    eng.forward = forward
    return spent, began


def drive(eng: Any, req_cls: Any, prompts: list[list[int]], new: int) -> tuple[float, int]:
    wall, toks, _ = drive_timed(eng, req_cls, prompts, new)
    return wall, toks


def drive_timed(eng: Any, req_cls: Any, prompts: list[list[int]], new: int) -> tuple[float, int, float]:
    """Seconds from the first submit to the last result, tokens generated, and when the results were all in."""
    reqs = [req_cls(p, max_new_tokens=new, min_new_tokens=new, temperature=0.0) for p in prompts]
    t = time.perf_counter()
    res = [f.result() for f in [eng.submit(r) for r in reqs]]
    end = time.perf_counter()
    return end - t, sum(r.completion_tokens for r in res), end


def overhead(args: argparse.Namespace, cache: ModelCache, old: Any) -> None:
    loaded = cache.get(ModelSpec("tiny-random-llama", "causal-lm", "random", "llama", TINY_LLAMA_CONFIG))
    tok = loaded.tokenizer
    prompts = [tok(f"request {i}: " + "words " * (i % 9))["input_ids"] for i in range(args.rows)]
    rows: dict[str, list[tuple[float, ...]]] = {"before (engine at baseline rev)": [], "this engine": []}
    for _ in range(args.repeats):
        for label, cls, req in (("before (engine at baseline rev)", old.GenerationEngine, old.GenRequest),
                                ("this engine", GenerationEngine, GenRequest)):
            eng = cls(loaded.model, tok, device="cpu", max_batch=args.rows)
            spent, began = timed_forward(eng)
            drive(eng, req, prompts[:4], 2)  # warm the thread
            spent.clear()
            began.clear()
            _, toks, end = drive_timed(eng, req, prompts, args.new_tokens)
            eng.stop()
            wall = end - began[0]  # the engine's time: from its first forward pass to the last result
            steps = len(spent)
            fwd = sum(spent)
            rows[label].append((1 - fwd / wall, (wall - fwd) / steps * 1e3, wall / steps * 1e3, toks / wall))
    print(f"\noverhead: tiny llama, {args.rows} rows x {args.new_tokens} tokens, {args.repeats} runs interleaved "
          f"(medians), {os.cpu_count()} CPU cores, no GPU")
    print(f"{'engine':<34} {'outside forward':>16} {'outside ms/step':>16} {'ms/step':>9} {'tokens/s':>10}")
    for label, runs in rows.items():
        out, out_ms, ms, tps = (statistics.median(x) for x in zip(*runs, strict=True))
        print(f"{label:<34} {out:>15.1%} {out_ms:>16.2f} {ms:>9.2f} {tps:>10.0f}")


def smollm(cache: ModelCache) -> Any:
    seed = next(s for s in SEEDS if s["name"] == "smollm2-135m-instruct")
    return cache.get(ModelSpec(seed["name"], seed["kind"], seed["source_type"], seed["source"], {}))


def padded_generate(model: Any, tok: Any, texts: list[str], new_tokens: int) -> float:
    """Seconds of one padded `model.generate` over `texts`, greedy, exactly `new_tokens` each. Callers run it in a
    thread of its own (as the engine's work runs in the engine's thread), so that no thread's OpenMP pool outlives
    its run and slows the next one down (see workers.engines.locks.in_own_thread)."""
    tok.padding_side = "left"
    with torch.inference_mode():
        enc = tok(texts, return_tensors="pt", padding=True)
        t = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id)
        return time.perf_counter() - t


def throughput(args: argparse.Namespace, cache: ModelCache, old: Any) -> None:
    loaded = smollm(cache)
    model, tok = loaded.model, loaded.tokenizer
    texts = [f"{i}: Write a long story about a fox who learns to fly. " * 2 for i in range(args.jobs)]
    prompts = [tok(t)["input_ids"] for t in texts]
    tps: dict[str, list[float]] = {"padded model.generate (one call)": [], "before (engine at baseline rev)": [],
                                   "this engine": []}
    for _ in range(args.repeats):
        tps["padded model.generate (one call)"].append(args.jobs * args.new_tokens / in_own_thread(
            lambda: padded_generate(model, tok, texts, args.new_tokens)))
        for label, cls, req in (("before (engine at baseline rev)", old.GenerationEngine, old.GenRequest),
                                ("this engine", GenerationEngine, GenRequest)):
            eng = cls(model, tok, device="cpu", max_batch=64)
            drive(eng, req, prompts[:2], 2)
            wall, toks = drive(eng, req, prompts, args.new_tokens)
            eng.stop()
            tps[label].append(toks / wall)
    base = statistics.median(tps["padded model.generate (one call)"])
    print(f"\nthroughput: SmolLM2-135M, {args.jobs} prompts x {args.new_tokens} tokens at once, {args.repeats} runs "
          f"interleaved (medians), {os.cpu_count()} CPU cores, no GPU")
    print(f"{'path':<34} {'tokens/s':>10} {'vs padded':>10}")
    for label, runs in tps.items():
        print(f"{label:<34} {statistics.median(runs):>10.1f} {statistics.median(runs) / base:>9.2f}x")


def prefix(args: argparse.Namespace, cache: ModelCache) -> None:
    loaded = smollm(cache) if args.prefix_model == "smollm2" else cache.get(
        ModelSpec("tiny-random-llama", "causal-lm", "random", "llama", TINY_LLAMA_CONFIG))
    tok = loaded.tokenizer
    sentence = "Read the document below and answer with its main topic in three words or fewer, no punctuation. "
    instruction = sentence * 40
    cut = tok(instruction)["input_ids"][: args.instruction_tokens]
    docs = [cut + tok(f"\n\nDocument {i}: the quarterly report of unit {i * 7} lists {i % 13} incidents "
                      f"and {i % 5} open items.\nTopic:")["input_ids"] for i in range(args.docs)]
    walls: dict[str, list[float]] = {"without prefix store": [], "with prefix store": []}
    for _ in range(args.prefix_repeats):
        for label, budget in (("without prefix store", 0), ("with prefix store", 256 * 2**20)):
            eng = GenerationEngine(loaded.model, tok, device="cpu", max_batch=64, prefix_cache_bytes=budget)
            wall, _ = drive(eng, GenRequest, docs, args.new_tokens_prefix)
            eng.stop()
            walls[label].append(wall)
    base = statistics.median(walls["without prefix store"])
    print(f"\nprefix: {args.prefix_model}, {args.docs} documents, shared instruction {len(cut)} tokens, document "
          f"{len(docs[0]) - len(cut)}-{len(docs[-1]) - len(cut)} tokens, {args.new_tokens_prefix} new tokens each; "
          f"{args.prefix_repeats} runs interleaved (medians), {os.cpu_count()} CPU cores, no GPU")
    print(f"{'engine':<24} {'wall s':>8} {'docs/s':>8} {'speed-up':>9}")
    for label, runs in walls.items():
        w = statistics.median(runs)
        print(f"{label:<24} {w:>8.2f} {args.docs / w:>8.1f} {base / w:>8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["overhead", "throughput", "prefix"])
    ap.add_argument("--baseline-rev", default="139bf7f", help="git revision of the engine to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--instruction-tokens", type=int, default=300)
    ap.add_argument("--new-tokens-prefix", type=int, default=4)
    ap.add_argument("--prefix-repeats", type=int, default=1)
    ap.add_argument("--prefix-model", choices=["smollm2", "tiny"], default="smollm2")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = Path(os.environ.get("LLMOS_MODEL_DIR", ROOT / ".llmos" / "bench-models"))
    cache = ModelCache(model_dir=model_dir, device="cpu", budget_bytes=2**34, max_batch=64)
    old = old_engine_class(args.baseline_rev) if args.only in (None, "overhead", "throughput") else None
    if args.only in (None, "overhead"):
        overhead(args, cache, old)
    if args.only in (None, "throughput"):
        throughput(args, cache, old)
    if args.only in (None, "prefix"):
        prefix(args, cache)
    cache.close()


if __name__ == "__main__":
    main()
