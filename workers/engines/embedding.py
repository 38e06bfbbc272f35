"""Sentence embeddings: mean-pooled last hidden states (attention-masked), optionally L2-normalised."""

from __future__ import annotations

import threading
from typing import Any

import torch


class EmbeddingEngine:
    """Embeds lists of texts in padded batches. One forward pass at a time per model."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str, max_batch: int = 64, max_length: int = 512,
                 name: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.max_length = max_length
        self.name = name
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def idle(self) -> bool:
        return self._busy == 0

    def stop(self) -> None:
        pass

    @torch.inference_mode()
    def embed(self, texts: list[str], *, normalize: bool = True) -> tuple[list[list[float]], list[int]]:
        """Vectors and token counts, in the order given. Texts longer than the model's window are truncated."""
        vectors: list[list[float]] = []
        tokens: list[int] = []
        with self._lock:
            self._busy += 1
            try:
                for start in range(0, len(texts), self.max_batch):
                    part = texts[start:start + self.max_batch]
                    enc = self.tokenizer(part, padding=True, truncation=True, max_length=self.max_length,
                                         return_tensors="pt").to(self.device)
                    hidden = self.model(**enc).last_hidden_state.float()
                    mask = enc["attention_mask"].unsqueeze(-1).float()
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    if normalize:
                        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                    vectors.extend(pooled.cpu().tolist())
                    tokens.extend(int(n) for n in enc["attention_mask"].sum(1).tolist())
            finally:
                self._busy -= 1
        return vectors, tokens
