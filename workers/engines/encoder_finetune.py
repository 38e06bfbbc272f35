"""Encoder fine-tuning: a classification head on an encoder (BERT-like, e.g. all-MiniLM-L6-v2) for texts
(`classification`: one label per text) or for tokens (`token_classification`: one BIO tag per word), trained
fully or with LoRA adapters merged into the saved model.

The loop, batch order, checkpoints and resume are LoraTrainer's; this adds the heads, the examples' encoding and
the validation metrics at each epoch's end: accuracy and macro-F1, or entity precision, recall and F1 (seqeval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors.torch import load_file
from seqeval.metrics import f1_score, precision_score, recall_score
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from workers.engines.finetune import IGNORE, Encoded, LoraTrainer, _publish, _tmp_dir, peft_model

WEIGHTS = "model.safetensors"


def tag_names(entity_types: list[str]) -> list[str]:
    """The label set of a token classifier: O, then B-/I- of each entity type."""
    return ["O"] + [f"{p}-{t}" for t in entity_types for p in ("B", "I")]


def encode_text(tok: Any, example: dict[str, Any], label_ids: dict[str, int], max_len: int) -> Encoded:
    ids = tok(example["text"])["input_ids"]
    return Encoded(ids[:max_len], [label_ids[example["label"]]], len(ids) > max_len)


def encode_tagged(tok: Any, example: dict[str, Any], label_ids: dict[str, int], max_len: int) -> Encoded:
    """Each word's tag on its first sub-word token; later pieces and special tokens are not scored."""
    enc = tok(example["tokens"], is_split_into_words=True, truncation=True, max_length=max_len)
    labels, seen = [], set()
    for w in enc.word_ids():
        labels.append(IGNORE if w is None or w in seen else label_ids[example["tags"][w]])
        if w is not None:
            seen.add(w)
    return Encoded(enc["input_ids"], labels, len(seen) < len(example["tokens"]))


def macro_f1(gold: list[int], pred: list[int], n: int) -> float:
    scores = []
    for c in range(n):
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == p == c)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if p == c != g)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == c != p)
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


class EncoderTrainer(LoraTrainer):
    def __init__(self, *, base_path: Path, device: str, params: dict[str, Any], train: list[Encoded],
                 valid: list[Encoded], pad_id: int, labels: list[str]) -> None:
        self.method, self.labels = params["method"], labels
        self.lora = params.get("tuning") == "lora"
        super().__init__(base_path=base_path, device=device, params=params, train=train, valid=valid,
                         pad_id=pad_id)

    def build(self, base_path: Path) -> Any:
        auto = AutoModelForSequenceClassification if self.method == "classification" else \
            AutoModelForTokenClassification
        torch.manual_seed(self.params["seed"])  # the new head's initial weights
        model = auto.from_pretrained(base_path, num_labels=len(self.labels), dtype=torch.float32,
                                     id2label=dict(enumerate(self.labels)),
                                     label2id={label: i for i, label in enumerate(self.labels)})
        if not self.lora:  # every weight but the word embeddings (half of MiniLM; fixed, they train 2x faster)
            model.get_input_embeddings().weight.requires_grad_(False)
            return model
        lora = self.params["lora"]
        config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                            target_modules=lora.get("target_modules") or "all-linear",
                            task_type="SEQ_CLS" if self.method == "classification" else "TOKEN_CLS")
        return peft_model(model, config, self.params["seed"])  # the head is trained in full (modules_to_save)

    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        batch = super().collate(items)
        if self.method == "classification":
            batch["labels"] = torch.tensor([e.labels[0] for e in items], device=self.device)
        return batch

    # ---- validation: loss every log, the task's metrics at each epoch's end

    def validation(self, epoch_end: bool) -> dict[str, Any]:
        if not self.valid or not epoch_end:
            return {}
        loss, gold, pred = self.predict(self.valid)
        metrics: dict[str, Any] = {"valid_loss": round(loss, 6)}
        if self.method == "classification":
            g, p = [x[0] for x in gold], [x[0] for x in pred]
            metrics["accuracy"] = round(sum(a == b for a, b in zip(g, p, strict=True)) / len(g), 6)
            metrics["macro_f1"] = round(macro_f1(g, p, len(self.labels)), 6)
        else:
            gt = [[self.labels[i] for i in row] for row in gold]
            pt = [[self.labels[i] for i in row] for row in pred]
            metrics["precision"] = round(float(precision_score(gt, pt)), 6)
            metrics["recall"] = round(float(recall_score(gt, pt)), 6)
            metrics["f1"] = round(float(f1_score(gt, pt)), 6)
        return metrics

    @torch.no_grad()
    def predict(self, examples: list[Encoded]) -> tuple[float, list[list[int]], list[list[int]]]:
        """Mean loss, and the gold and predicted label ids of every scored position of each example."""
        self.model.eval()
        total, count, gold, pred = 0.0, 0, [], []
        try:
            for start in range(0, len(examples), self.batch_size):
                part = examples[start:start + self.batch_size]
                batch = self.collate(part)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    out = self.model(**batch)
                total += out.loss.item() * len(part)
                count += len(part)
                best = out.logits.argmax(-1).tolist()
                for i, e in enumerate(part):
                    if self.method == "classification":
                        gold.append(e.labels)
                        pred.append([best[i]])
                    else:
                        keep = [j for j, lab in enumerate(e.labels) if lab != IGNORE]
                        gold.append([e.labels[j] for j in keep])
                        pred.append([best[i][j] for j in keep])
        finally:
            self.model.train()
        return total / count if count else float("nan"), gold, pred

    # ---- saving

    def save_weights(self, path: Path) -> None:
        if self.lora:
            super().save_weights(path)  # the adapters and the head
        else:
            self.model.save_pretrained(path)

    def load_weights(self, path: Path) -> None:
        if self.lora:
            super().load_weights(path)
        else:
            self.model.load_state_dict(load_file(str(path / WEIGHTS), device=str(self.device)))

    def save_model(self, path: Path, tokenizer: Any) -> None:
        """The fine-tuned model as a plain transformers directory (LoRA merged in), with its tokenizer."""
        tmp = _tmp_dir(path)
        model = self.model.merge_and_unload() if self.lora else self.model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _publish(tmp, path)
