"""Generation throughput of the platform's engine beside naive per-job `generate()`, padded `generate()` and
transformers' own continuous batching (`generate_batch`), in one process, on one device, in the same run.

Needs only torch + transformers (+ peft): no Celery, Flask, database or broker. Random weights in the shape of
real models (the real weights are not needed to time them); prompts are random token ids.

    # on a GPU machine (CUDA graphs for the engine's decode step on by default; --no-graphs to compare)
    python bench/gpu_generate.py --shape smollm2-135m --jobs 1024 --new-tokens 128 --max-batch 256
    python bench/gpu_generate.py --shape llama-1b --jobs 1024 --new-tokens 128 --max-batch 256
    # CPU, small sizes (what runs on a laptop or CI)
    python bench/gpu_generate.py --shape smollm2-135m --jobs 32 --new-tokens 16 --max-batch 32 --naive-sample 2

Prints tokens/s per path and how many times faster the engine is. The whole platform over HTTP (API, queue,
worker) is timed by bench/drain.py and bench/openai_latency.py, which need the full install.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.engines.generation import GenerationEngine, GenRequest  # noqa: E402
from workers.engines.locks import in_own_thread  # noqa: E402

SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
}


class IdTokenizer:
    """What the engine needs of a tokenizer, for prompts that are already token ids."""

    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def build(shape: str, device: str, dtype: torch.dtype) -> Any:
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, pad_token_id=0, bos_token_id=2,
                      eos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.generation_config = GenerationConfig(eos_token_id=1, pad_token_id=0)
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--jobs", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64, help="mean prompt length (each within +-25%%)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--naive-sample", type=int, default=8, help="requests timed for the naive baseline")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-graphs", action="store_true", help="the engine's decode step eagerly on a GPU too")
    ap.add_argument("--skip", default="", help="comma list of paths to skip: naive,padded,cb")
    args = ap.parse_args()
    dev = args.device
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    # torch work outside the engine runs in threads that end with it (on a CPU a thread's OpenMP pool outlives
    # its work and slows the engine's thread down: workers.engines.locks.in_own_thread)
    model = in_own_thread(lambda: build(args.shape, dev, dtype))
    g = torch.Generator().manual_seed(1)
    lo, hi = max(1, args.prompt_tokens * 3 // 4), args.prompt_tokens * 5 // 4 + 1
    prompts = [torch.randint(3, model.config.vocab_size, (int(torch.randint(lo, hi, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(args.jobs)]
    where = (torch.cuda.get_device_name() if dev.startswith("cuda") else f"CPU, {os.cpu_count()} cores")
    print(f"{args.shape} (random weights, {dtype}), {args.jobs} requests x {args.new_tokens} new tokens, prompts "
          f"{lo}-{hi - 1} tokens, max batch {args.max_batch}, on {where}")
    rows: list[tuple[str, float, str]] = []
    skip = set(filter(None, args.skip.split(",")))

    # the platform's engine: every request submitted at once, as the worker's task threads do
    graphs = dev.startswith("cuda") and not args.no_graphs
    eng = GenerationEngine(model, IdTokenizer(), device=dev, max_batch=args.max_batch, cuda_graphs=graphs)
    warm = [GenRequest(p, max_new_tokens=8, min_new_tokens=8, temperature=0.0) for p in prompts[: args.max_batch]]
    for f in [eng.submit(r) for r in warm]:  # warm-up (and CUDA graph capture for the buckets it meets)
        f.result()
    t0 = time.perf_counter()
    futures = [eng.submit(GenRequest(p, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     temperature=0.0)) for p in prompts]
    done = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    eng.stop()
    toks = sum(r.completion_tokens for r in done)
    captured = eng.graphs.captured if eng.graphs else 0
    rows.append((f"engine ({'CUDA graphs' if graphs else 'eager'})", toks / wall,
                 f"wall {wall:.1f}s; {eng.prefill_forwards} prefill forwards; {captured} graphs"))

    def baselines() -> None:
        gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
               "pad_token_id": 0, "eos_token_id": 1}
        with torch.inference_mode():
            if "naive" not in skip:
                t0 = time.perf_counter()
                for p in prompts[: args.naive_sample]:
                    model.generate(torch.tensor([p], device=dev), attention_mask=torch.ones((1, len(p)), device=dev,
                                                                                            dtype=torch.long), **gen)
                sync(dev)
                wall = time.perf_counter() - t0
                every = wall / args.naive_sample * args.jobs
                rows.append(("naive: one generate() per request", args.naive_sample * args.new_tokens / wall,
                             f"{args.naive_sample} timed; all {args.jobs} ~{every:.0f}s"))
            if "padded" not in skip:
                t0 = time.perf_counter()
                for i in range(0, len(prompts), args.max_batch):
                    chunk = prompts[i : i + args.max_batch]
                    width = max(map(len, chunk))
                    ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=dev)
                    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=dev)
                    model.generate(ids, attention_mask=attn, **gen)
                sync(dev)
                wall = time.perf_counter() - t0
                rows.append((f"padded generate(), batches of {args.max_batch}", args.jobs * args.new_tokens / wall,
                             f"wall {wall:.1f}s"))
        if "cb" not in skip:  # generate_batch manages its own tensors and refuses to run inside inference_mode
            label = "transformers generate_batch (continuous)"
            if not hasattr(model, "generate_batch"):
                rows.append((label, 0.0, "unavailable in this transformers"))
            else:
                try:
                    cfg = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                           do_sample=False, eos_token_id=-1, pad_token_id=0)
                    t0 = time.perf_counter()
                    out = model.generate_batch(inputs=prompts, generation_config=cfg)
                    sync(dev)
                    wall = time.perf_counter() - t0
                    rows.append((label, sum(len(r.generated_tokens) for r in out.values()) / wall, f"wall {wall:.1f}s"))
                except Exception as exc:  # noqa: BLE001 - an optional baseline; say why it is missing
                    rows.append((label, 0.0, f"unavailable: {exc.__class__.__name__}: {str(exc)[:70]}"))

    in_own_thread(baselines)

    base = rows[0][1]
    print(f"\n{'path':<44} {'tokens/s':>10} {'engine is':>10}  note")
    for label, tps, note in rows:
        ratio = f"{base / tps:.2f}x" if tps else "-"
        print(f"{label:<44} {tps:>10.1f} {ratio:>10}  {note}")


if __name__ == "__main__":
    main()
