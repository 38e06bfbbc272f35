"""Generation throughput through the whole platform, beside naive per-job generate() and transformers' own
batching, in the same run on the same device.

    # on a GPU machine (the worker on the embedded broker: SQLite + filesystem, no services needed)
    python bench/gpu_generate.py --shape smollm2-135m --jobs 1024 --new-tokens 128
    python bench/gpu_generate.py --shape llama-1b --jobs 1024 --new-tokens 128
    # CPU figures with the real SmolLM2 weights: 32 jobs at once vs one at a time
    python bench/gpu_generate.py --model smollm2-135m-instruct --jobs 32 --new-tokens 32 --sequential 32

The platform path: N jobs POSTed to the API (gunicorn) at once, timed from the first submit to the last
result; aggregate tokens/s and p50/p99 job latency. Baselines (after the worker stopped, same device):
one `generate()` per request for a sample of requests, one padded `generate()` per batch of `--max-batch`,
and `generate_batch` (transformers' continuous batching) when it is available.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # random weights in the shape of real models (the weights of the real ones are not needed)
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), help="a random-weight model of this shape")
    ap.add_argument("--model", help="a registered model instead (e.g. smollm2-135m-instruct)")
    ap.add_argument("--jobs", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--naive-sample", type=int, default=8, help="requests timed for the naive baseline")
    ap.add_argument("--sequential", type=int, default=0, help="also run this many jobs one at a time")
    ap.add_argument("--skip-baselines", action="store_true")
    args = ap.parse_args()
    if not (args.shape or args.model):
        ap.error("give --shape or --model")

    data = Path(tempfile.mkdtemp(prefix="llmos-genbench-"))
    env = dict(os.environ, LLMOS_DATA_DIR=str(data), LLMOS_ENV="test", HF_HUB_OFFLINE="1",
               LLMOS_MODEL_DIR=os.environ.get("LLMOS_MODEL_DIR", str(ROOT / ".llmos" / "bench-models")),
               LLMOS_WORKER_MAX_BATCH=str(args.max_batch), TOKENIZERS_PARALLELISM="false")
    env.pop("LLMOS_DATABASE_URL", None)
    env.pop("LLMOS_BROKER_URL", None)
    llmos = [sys.executable, "-m", "app.cli"]
    subprocess.run([*llmos, "db", "upgrade"], env=env, check=True, capture_output=True)
    os.environ.update(env)
    from app.db import Database
    from app.models import ModelEntry
    from app.settings import load_settings

    settings = load_settings()
    name = args.model
    if args.shape:
        name = f"bench-{args.shape}"
        cfg = {"architecture": "llama", **SHAPES[args.shape], "max_position_embeddings": 8192, "seed": 0}
        db = Database(settings.database_url)
        with db.session() as s:
            s.merge(ModelEntry(name=name, kind="causal-lm", source_type="random", source="llama", config=cfg))
        db.dispose()
    key = subprocess.run([*llmos, "keys", "create", "--owner", "bench", "--rate-limit", "1000000/minute"],
                         env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    port = 8765
    log = open(data / "processes.log", "wb")  # noqa: SIM115 - closed at the end
    procs = [
        subprocess.Popen([*llmos, "worker", "--concurrency", str(min(args.jobs + 8, 1100)), "--loglevel", "WARNING"],
                         env=env, stdout=log, stderr=subprocess.STDOUT),
        subprocess.Popen([*llmos, "api", "--port", str(port), "--workers", "2", "--threads", "64"], env=env,
                         stdout=log, stderr=subprocess.STDOUT),
    ]
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    for _ in range(600):
        try:
            if requests.get(f"{base}/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    http = requests.Session()
    prompt = ("The quick brown fox jumps over the lazy dog. " * 40)[: args.prompt_tokens]
    if args.model:  # a real tokenizer: the prompt is text, its token count differs
        prompt = "Write a long story about a fox who learns to fly. " * max(1, args.prompt_tokens // 12)

    def body(i: int) -> dict:
        return {"kind": "generate", "model": name, "input": {"prompt": f"{i}: {prompt}"},
                "params": {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "temperature": 0},
                "timeout_s": 3600}

    def run_one(i: int) -> dict:
        job = http.post(f"{base}/jobs", json=body(i), headers=headers, timeout=60).json()
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            job = http.get(f"{base}/jobs/{job['id']}?wait=60", headers=headers, timeout=70).json()
        return job

    t = time.monotonic()
    warm = run_one(-1)
    assert warm["status"] == "succeeded", warm
    print(f"model {name}: warm-up job (cold load) {time.monotonic() - t:.1f}s on {warm['worker_id']}")
    rows = []

    def platform(label: str, n: int, parallel: int) -> None:
        t0 = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            done = list(pool.map(run_one, range(n)))
        wall = time.monotonic() - t0
        ok = [j for j in done if j["status"] == "succeeded"]
        toks = sum(j["usage"]["completion_tokens"] for j in ok)
        lat = [j["usage"]["seconds"] for j in ok]
        rows.append((label, n, toks / wall, pct(lat, 0.5), pct(lat, 0.99), f"{len(ok)}/{n} ok, wall {wall:.1f}s"))

    platform(f"platform: {args.jobs} jobs at once", args.jobs, min(args.jobs, 256))
    if args.sequential:
        platform(f"platform: {args.sequential} jobs one at a time", args.sequential, 1)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)
    log.close()

    if not args.skip_baselines:
        baselines(args, settings, name, prompt, rows)
    print(f"\n{'path':<48} {'jobs':>6} {'tokens/s':>10} {'p50 s':>8} {'p99 s':>8}  note")
    for label, n, tps, p50, p99, note in rows:
        print(f"{label:<48} {n:>6} {tps:>10.1f} {p50:>8.2f} {p99:>8.2f}  {note}")


def baselines(args: argparse.Namespace, settings, name: str, prompt: str, rows: list) -> None:  # noqa: ANN001
    from app.db import Database
    from app.models import ModelEntry
    from workers.model_cache import ModelCache, ModelSpec

    device = "cuda" if torch.cuda.is_available() else "cpu"
    db = Database(settings.database_url)
    with db.session() as s:
        e = s.get(ModelEntry, name)
        spec = ModelSpec(e.name, e.kind, e.source_type, e.source, dict(e.config))
    cache = ModelCache(model_dir=settings.model_dir, device=device, budget_bytes=2**40, max_batch=args.max_batch)
    loaded = cache.get(spec)
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    texts = [f"{i}: {prompt}" for i in range(args.jobs)]
    gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
           "pad_token_id": tok.pad_token_id}

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        lat = []
        t0 = time.monotonic()
        for text in texts[: args.naive_sample]:
            t1 = time.monotonic()
            enc = tok(text, return_tensors="pt").to(device)
            model.generate(**enc, **gen)
            sync()
            lat.append(time.monotonic() - t1)
        wall = time.monotonic() - t0
        rows.append(("naive: one generate() per request", args.naive_sample,
                     args.naive_sample * args.new_tokens / wall, pct(lat, 0.5), pct(lat, 0.99),
                     f"sequential; {args.jobs} would take ~{wall / args.naive_sample * args.jobs:.0f}s"))
        t0 = time.monotonic()
        for i in range(0, len(texts), args.max_batch):
            enc = tok(texts[i : i + args.max_batch], return_tensors="pt", padding=True).to(device)
            model.generate(**enc, **gen)
        sync()
        wall = time.monotonic() - t0
        rows.append((f"padded generate(), batches of {args.max_batch}", args.jobs,
                     args.jobs * args.new_tokens / wall, wall, wall, "in-process, no queue or database"))
    # generate_batch manages its own tensors and refuses to run inside inference_mode
    if hasattr(model, "generate_batch"):
        from transformers import GenerationConfig

        try:
            cfg = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                   do_sample=False, eos_token_id=-1, pad_token_id=tok.pad_token_id)
            inputs = [tok(t)["input_ids"] for t in texts]
            t0 = time.monotonic()
            out = model.generate_batch(inputs=inputs, generation_config=cfg)
            sync()
            wall = time.monotonic() - t0
            toks = sum(len(r.generated_tokens) for r in out.values())
            rows.append(("transformers generate_batch (continuous)", args.jobs, toks / wall, wall, wall,
                         "in-process"))
        except Exception as exc:  # noqa: BLE001 - an optional baseline; say why it is missing
            rows.append(("transformers generate_batch (continuous)", 0, 0.0, 0.0, 0.0,
                         f"unavailable: {exc.__class__.__name__}: {str(exc)[:60]}"))
    cache.close()


if __name__ == "__main__":
    main()
