"""LoRA fine-tuning on transformers + peft.

- `encode` turns a checked example into token ids and labels: loss on the completion of a prompt/completion
  example, on the assistant messages (weight 1) of a chat. The chat is rendered with the model's own template,
  one message at a time, so each token is known to belong to the assistant or not.
- `LoraTrainer` trains an adapter on a private copy of the base model (bf16 with autocast on a GPU, fp32 on a
  CPU): a fixed batch order per (seed, epoch), so a run resumed from a checkpoint takes the same batches it
  would have; between steps it asks whether to stop (cancel, timeout) and saves a checkpoint before it does.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from transformers import AutoModelForCausalLM

from workers.errors import JobFailure
from workers.loaders import BUILD_LOCK

log = logging.getLogger(__name__)

IGNORE = -100  # label of a position the loss skips
STATE_FILE = "trainer_state.pt"


# ---- examples to tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def encode(tok: Any, example: dict[str, Any], max_seq_len: int) -> Encoded:
    if "messages" in example:
        segments = chat_segments(tok, example["messages"])
    else:
        # the same ids a generate job's input.prompt gets (tokenizer's special tokens included), then the
        # completion and end-of-sequence, so the model learns where to stop
        segments = [(tok(example["prompt"])["input_ids"], False),
                    (tok(example["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id], True)]
    ids: list[int] = []
    labels: list[int] = []
    for seg, trained in segments:
        ids += seg
        labels += seg if trained else [IGNORE] * len(seg)
    truncated = len(ids) > max_seq_len
    return Encoded(ids[:max_seq_len], labels[:max_seq_len], truncated)


def chat_segments(tok: Any, messages: list[dict[str, Any]]) -> list[tuple[list[int], bool]]:
    """The conversation as (token ids, trained) pieces. Each message's text is what the template adds when the
    message is appended; an assistant message is split into the generation prompt (not trained: a generate job
    sends it) and its reply (trained unless weight 0)."""
    if not getattr(tok, "chat_template", None):
        raise JobFailure("invalid_input", "the base model has no chat template; send prompt/completion examples")

    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        full = render(clean[: i + 1], False)
        if m["role"] == "assistant":
            head = render(clean[:i], True)
            if not (head.startswith(done) and full.startswith(head)):
                raise JobFailure("invalid_input", "the base model's chat template does not render conversations "
                                 "message by message; send prompt/completion examples")
            pieces += [(head[len(done):], False), (full[len(head):], m.get("weight", 1) == 1)]
        else:
            if not full.startswith(done):
                raise JobFailure("invalid_input", "the base model's chat template does not render conversations "
                                 "message by message; send prompt/completion examples")
            pieces.append((full[len(done):], False))
        done = full
    return [(tok(text, add_special_tokens=False)["input_ids"], trained) for text, trained in pieces if text]


# ---- training ------------------------------------------------------------------------------------------


@dataclass
class Hooks:
    """What the trainer asks and tells its job between steps."""

    stop: Callable[[], str | None]  # a reason to stop now ("cancelled", "timeout"), or None
    log: Callable[[dict[str, Any]], None]  # metrics every log_every_steps
    checkpoint: Callable[[str], None]  # "save a checkpoint now, for this reason" (trainer.save does the saving)


class LoraTrainer:
    def __init__(self, *, base_path: Path, device: str, params: dict[str, Any], train: list[Encoded],
                 valid: list[Encoded], pad_id: int) -> None:
        self.device = torch.device(device)
        self.params = params
        self.train, self.valid, self.pad_id = train, valid, pad_id
        self.autocast = self.device.type == "cuda"
        with BUILD_LOCK:
            self.model = self.build(base_path).to(self.device)
        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable_params = sum(p.numel() for p in trainable)
        self.optimizer = torch.optim.AdamW(trainable, lr=params["learning_rate"], weight_decay=0.0)
        self.batch_size = params["batch_size"]
        self.steps_per_epoch = math.ceil(len(train) / self.batch_size)
        self.total_steps = self.steps_per_epoch * params["n_epochs"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear decay to zero over the run
            self.optimizer, lambda s: max(0.0, 1.0 - s / self.total_steps))
        self.step = 0
        self.trained_tokens = 0
        self.train_seconds = 0.0
        self.last_metrics: dict[str, Any] = {}
        self._order: tuple[int, list[int]] = (0, [])

    def build(self, base_path: Path) -> Any:
        """The model to train (called under BUILD_LOCK): the base with LoRA adapters."""
        lora = self.params["lora"]
        config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                            target_modules=lora.get("target_modules") or "all-linear", task_type="CAUSAL_LM")
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if self.autocast else
                                                    torch.float32)
        base.config.use_cache = False
        return peft_model(base, config, self.params["seed"])

    # ---- batches

    def epoch_of(self, step: int) -> int:
        """1-based epoch that step `step` (1-based) belongs to."""
        return (step - 1) // self.steps_per_epoch + 1

    def batch_indices(self, step: int) -> list[int]:
        """The examples of step `step`: a shuffle fixed by (seed, epoch), so a resumed run repeats none."""
        epoch = self.epoch_of(step)
        if self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.params["seed"] * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.train), generator=gen).tolist())
        start = ((step - 1) % self.steps_per_epoch) * self.batch_size
        return self._order[1][start:start + self.batch_size]

    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        attn = torch.zeros((len(items), width), dtype=torch.long)
        for i, e in enumerate(items):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            attn[i, :n] = 1
        return {"input_ids": ids.to(self.device), "labels": labels.to(self.device),
                "attention_mask": attn.to(self.device)}

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**batch).loss

    # ---- the loop

    def run(self, hooks: Hooks) -> dict[str, Any]:
        """Train from self.step to the end; returns the last metrics. On a stop request: checkpoint, then
        JobFailure(reason)."""
        every = self.params["log_every_steps"]
        ckpt_every = self.params.get("checkpoint_every_steps")
        window_loss, window_steps, window_tokens, window_seconds = 0.0, 0, 0, 0.0
        while self.step < self.total_steps:
            reason = hooks.stop()
            if reason is not None:
                hooks.checkpoint(reason)
                message = "cancelled while training" if reason == "cancelled" else "the job ran past its timeout_s"
                raise JobFailure(reason, f"{message} (stopped at step {self.step}/{self.total_steps}; "
                                 "the last checkpoint is kept)")
            t0 = time.monotonic()
            step = self.step + 1
            batch = self.collate([self.train[i] for i in self.batch_indices(step)])
            loss = self._loss(batch)
            if not torch.isfinite(loss):
                raise JobFailure("invalid_input", f"the training loss became {loss.item()} at step {step}; "
                                 "lower params.learning_rate")
            loss.backward()
            loss_value = loss.item()
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.monotonic() - t0
            tokens = int(batch["attention_mask"].sum())
            self.step = step
            self.trained_tokens += tokens
            self.train_seconds += seconds
            window_loss += loss_value
            window_steps += 1
            window_tokens += tokens
            window_seconds += seconds
            epoch_end = step % self.steps_per_epoch == 0
            if step % every == 0 or step == self.total_steps or epoch_end:
                metrics = {
                    "step": step, "total_steps": self.total_steps, "epoch": self.epoch_of(step),
                    "train_loss": round(window_loss / window_steps, 6),
                    "learning_rate": self.scheduler.get_last_lr()[0],
                    "tokens_per_second": round(window_tokens / window_seconds, 1) if window_seconds else None,
                    "trained_tokens": self.trained_tokens,
                }
                metrics.update(self.validation(epoch_end or step == self.total_steps))
                self.last_metrics = metrics
                hooks.log(metrics)
                window_loss, window_steps, window_tokens, window_seconds = 0.0, 0, 0, 0.0
            if epoch_end:
                hooks.checkpoint("epoch")
            elif ckpt_every and step % ckpt_every == 0:
                hooks.checkpoint("interval")
        return self.last_metrics

    def validation(self, epoch_end: bool) -> dict[str, Any]:
        """Validation metrics for a progress event (every log_every_steps; `epoch_end` at each epoch's end)."""
        return {"valid_loss": round(self.validation_loss(), 6)} if self.valid else {}

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Token-weighted mean loss over the validation examples."""
        self.model.eval()
        total, count = 0.0, 0
        try:
            for start in range(0, len(self.valid), self.batch_size):
                batch = self.collate(self.valid[start:start + self.batch_size])
                n = int((batch["labels"][:, 1:] != IGNORE).sum())
                total += self._loss(batch).item() * n
                count += n
        finally:
            self.model.train()
        return total / count if count else float("nan")

    # ---- saving and resuming

    def save(self, path: Path) -> None:
        """A checkpoint: the adapter (peft format, loadable on its own) and the optimizer/scheduler/step state."""
        tmp = _tmp_dir(path)
        self.save_weights(tmp)
        torch.save({"step": self.step, "trained_tokens": self.trained_tokens, "train_seconds": self.train_seconds,
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "metrics": self.last_metrics}, tmp / STATE_FILE)
        _publish(tmp, path)

    def save_adapter(self, path: Path) -> None:
        tmp = _tmp_dir(path)
        self.model.save_pretrained(tmp)
        _publish(tmp, path)

    def save_weights(self, path: Path) -> None:
        """What a checkpoint keeps of the model: the adapter (peft format, loadable on its own)."""
        self.model.save_pretrained(path)

    def load_weights(self, path: Path) -> None:
        set_peft_model_state_dict(self.model, load_peft_weights(str(path), device=str(self.device)))

    def resume(self, path: Path) -> None:
        try:
            self.load_weights(path)
            state = torch.load(path / STATE_FILE, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise JobFailure("internal", f"checkpoint {path} could not be loaded: {exc}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        self.step, self.trained_tokens = state["step"], state["trained_tokens"]
        self.train_seconds, self.last_metrics = state["train_seconds"], state.get("metrics") or {}


def peft_model(base: Any, config: LoraConfig, seed: int) -> Any:
    torch.manual_seed(seed)  # the adapter's initial weights
    try:
        return get_peft_model(base, config)
    except ValueError as exc:  # e.g. target modules that the model does not have
        raise JobFailure("invalid_input", f"params.lora: {exc}") from None


def _tmp_dir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))


def _publish(tmp: Path, path: Path) -> None:
    """Move a finished directory into place; whatever was there (an earlier attempt's) is replaced."""
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
