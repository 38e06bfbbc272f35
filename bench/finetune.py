"""LoRA fine-tuning throughput through the whole platform, beside a bare peft training loop on the same data, in
the same run on the same device.

    # on a GPU machine (the worker on the embedded broker: SQLite + filesystem, no services needed)
    python bench/finetune.py --shape smollm2-135m --examples 2048 --seq-len 256 --batch-size 16 --epochs 2
    # on a CPU
    python bench/finetune.py --shape tiny --examples 256 --seq-len 128 --batch-size 8 --epochs 2

The platform path: the training file uploaded to the API, a `finetune` job submitted, a real worker process
(threads pool, embedded broker) trains it; figures from the finished job: its trained tokens over the job's
wall time (started_at to finished_at: model load, data checks, validation-free training, per-epoch
checkpoints, progress events, the final adapter) and over its training steps alone. The baseline, after the
worker stopped: the same model, LoRA config, batches (padded to the longest in the batch) and optimizer in a
plain loop — load, train, save the adapter — with no platform around it. Overhead = 1 - platform / baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # random weights in the shape of real models
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
}


def dataset(n: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Prompt/completion pairs of varied length (byte tokenizer: one token per character, plus end)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    rows = []
    for i in range(n):
        total = rng.randint(seq_len // 2, seq_len - 2)
        text = " ".join(rng.choice(words) for _ in range(total))[:total]
        cut = total // 3
        rows.append({"prompt": f"{i}: {text[:cut]}", "completion": text[cut:]})
    return rows


def baseline(model_path: Path, rows: list[dict], args: argparse.Namespace, device: str) -> dict:
    """A plain peft loop: what a user would write without the platform."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_start = time.monotonic()
    tok = AutoTokenizer.from_pretrained(model_path)
    cuda = device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if cuda else torch.float32)
    model.config.use_cache = False
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM")).to(device)
    model.train()
    examples = []
    for r in rows:
        p = tok(r["prompt"])["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        examples.append(((p + c)[: args.seq_len], ([-100] * len(p) + c)[: args.seq_len]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    steps = math.ceil(len(examples) / args.batch_size) * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    tokens = 0
    t_train = time.monotonic()
    for epoch in range(args.epochs):
        # the platform's batch order (seed 0): same batches, same padding
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(epoch + 1)).tolist()
        for start in range(0, len(order), args.batch_size):
            batch = [examples[i] for i in order[start:start + args.batch_size]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (x, y) in enumerate(batch):
                ids[i, : len(x)], labels[i, : len(y)], attn[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                loss = model(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(attn.sum())
    if cuda:
        torch.cuda.synchronize()
    train_s = time.monotonic() - t_train
    model.save_pretrained(tempfile.mkdtemp(prefix="llmos-bench-adapter-"))
    return {"tokens": tokens, "train_s": train_s, "wall_s": time.monotonic() - t_start, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--r", type=int, default=16)
    args = ap.parse_args()

    data = Path(tempfile.mkdtemp(prefix="llmos-ftbench-"))
    env = dict(os.environ, LLMOS_DATA_DIR=str(data), LLMOS_ENV="test", HF_HUB_OFFLINE="1",
               LLMOS_MODEL_DIR=os.environ.get("LLMOS_MODEL_DIR", str(ROOT / ".llmos" / "bench-models")),
               TOKENIZERS_PARALLELISM="false", LLMOS_PROGRESS_INTERVAL_S="5")
    env.pop("LLMOS_DATABASE_URL", None)
    env.pop("LLMOS_BROKER_URL", None)
    llmos = [sys.executable, "-m", "app.cli"]
    subprocess.run([*llmos, "db", "upgrade"], env=env, check=True, capture_output=True)
    os.environ.update(env)
    from app.db import Database
    from app.models import ModelEntry
    from app.settings import load_settings
    from workers import hardware, loaders

    settings = load_settings()
    name = f"bench-{args.shape}"
    cfg = {"architecture": "llama", **SHAPES[args.shape], "max_position_embeddings": 8192, "seed": 0,
           "tokenizer": "bytes"}
    db = Database(settings.database_url)
    with db.session() as s:
        s.merge(ModelEntry(name=name, kind="causal-lm", source_type="random", source="llama", config=cfg))
    db.dispose()
    model_path = loaders.materialise(name=name, source_type="random", source="llama", config=cfg,
                                     model_dir=settings.model_dir)
    device = hardware.detect(None, None).device
    rows = dataset(args.examples, args.seq_len)
    train_file = data / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    key = subprocess.run([*llmos, "keys", "create", "--owner", "bench", "--rate-limit", "1000000/minute"],
                         env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    port = 8766
    log = open(data / "processes.log", "wb")  # noqa: SIM115 - closed at the end
    procs = [
        subprocess.Popen([*llmos, "worker", "--concurrency", "4", "--loglevel", "WARNING"], env=env, stdout=log,
                         stderr=subprocess.STDOUT),
        subprocess.Popen([*llmos, "api", "--port", str(port), "--workers", "1", "--threads", "8"], env=env,
                         stdout=log, stderr=subprocess.STDOUT),
    ]
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        for _ in range(600):
            try:
                if requests.get(f"{base}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        with open(train_file, "rb") as fh:
            f = requests.post(f"{base}/files", headers=headers, files={"file": fh},
                              data={"purpose": "fine-tune"}).json()
        body = {"kind": "finetune", "model": name, "input": {"training_file": f["id"]},
                "params": {"lora": {"r": args.r, "alpha": 2 * args.r, "dropout": 0.0}, "learning_rate": 1e-4,
                           "batch_size": args.batch_size, "n_epochs": args.epochs, "max_seq_len": args.seq_len,
                           "log_every_steps": 50}}
        t0 = time.monotonic()
        job = requests.post(f"{base}/jobs", json=body, headers=headers).json()
        assert "id" in job, job
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            job = requests.get(f"{base}/jobs/{job['id']}?wait=30", headers=headers, timeout=40).json()
        submit_to_done = time.monotonic() - t0
        assert job["status"] == "succeeded", job
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        log.close()

    def ts(x: str) -> datetime:
        return datetime.fromisoformat(x.replace("Z", "+00:00"))

    usage = job["usage"]
    job_s = (ts(job["finished_at"]) - ts(job["started_at"])).total_seconds()
    bare = baseline(model_path, rows, args, device)
    platform_wall = usage["trained_tokens"] / job_s
    bare_wall = bare["tokens"] / bare["wall_s"]
    print(f"device {device}, model {name} (random weights), {args.examples} examples x {args.epochs} epochs, "
          f"batch {args.batch_size}, seq <= {args.seq_len}, LoRA r={args.r} on every linear layer")
    print(f"platform: {usage['trained_tokens']} tokens; job wall {job_s:.1f}s -> {platform_wall:,.0f} tokens/s; "
          f"training steps {usage['training_seconds']:.1f}s -> {usage['tokens_per_second']:,.0f} tokens/s; "
          f"submit to result {submit_to_done:.1f}s; final train_loss {job['output']['train_loss']}")
    print(f"bare peft loop: {bare['tokens']} tokens; wall (load+train+save) {bare['wall_s']:.1f}s -> "
          f"{bare_wall:,.0f} tokens/s; training steps {bare['train_s']:.1f}s -> "
          f"{bare['tokens'] / bare['train_s']:,.0f} tokens/s; last loss {bare['loss']:.4f}")
    print(f"overhead: job wall vs bare wall {1 - platform_wall / bare_wall:+.1%}; training steps "
          f"{1 - usage['tokens_per_second'] / (bare['tokens'] / bare['train_s']):+.1%}")


if __name__ == "__main__":
    main()
