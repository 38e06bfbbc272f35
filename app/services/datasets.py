"""Fine-tuning datasets: JSONL, one example per line, checked before any training starts.

An example is either `{"prompt": str, "completion": str}` (loss on the completion) or a chat
`{"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight"?: 0|1}, ...]}` (loss on the
assistant messages whose weight is not 0).

For encoder fine-tuning, method "classification" reads `{"text": str, "label": str}` and "token_classification"
reads `{"tokens": [str, ...], "tags": [str, ...]}`, one BIO tag per token ("O", "B-PER", "I-PER", ...).

Blank lines are skipped; any other bad line is reported with its line number and reason. Read line by line, so
checking a file never holds it in memory (no torch here: the API checks files at submit, the worker again before
it trains).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DatasetError(ValueError):
    def __init__(self, line: int | None, reason: str) -> None:
        self.line, self.reason = line, reason
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


@dataclass(frozen=True)
class Summary:
    examples: int
    chat: int
    prompt_completion: int
    labels: tuple[str, ...] = ()  # classification: the labels; token_classification: the entity types


def _check_classification(obj: dict[str, Any]) -> str | None:
    for name in ("text", "label"):
        if name not in obj:
            return f"missing field '{name}'"
        if not isinstance(obj[name], str) or not obj[name].strip():
            return f"'{name}' must be a non-empty string"
    if len(obj["label"]) > 200:
        return "'label' must be at most 200 characters"
    return None


def _check_tagged(obj: dict[str, Any]) -> str | None:
    for name in ("tokens", "tags"):
        if name not in obj:
            return f"missing field '{name}'"
        if not isinstance(obj[name], list) or not obj[name]:
            return f"'{name}' must be a non-empty list"
    if len(obj["tokens"]) != len(obj["tags"]):
        return f"{len(obj['tokens'])} tokens but {len(obj['tags'])} tags; give one tag per token"
    for i, (token, tag) in enumerate(zip(obj["tokens"], obj["tags"], strict=True)):
        if not isinstance(token, str) or not token.strip():
            return f"tokens[{i}] must be a non-empty string"
        if not isinstance(tag, str) or not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            return f"tags[{i}] must be 'O' or a BIO tag like 'B-PER' / 'I-PER', got {tag!r}"
    return None


def labels_of(obj: dict[str, Any], method: str) -> list[str]:
    """The class label of a classification example, or the entity types a tagged example uses."""
    if method == "classification":
        return [obj["label"]]
    return [tag[2:] for tag in obj["tags"] if tag != "O"]


def check_example(obj: Any, method: str = "lora") -> str | None:
    """Why this decoded line is not a training example for `method`, or None when it is one."""
    if not isinstance(obj, dict):
        return "each line must be a JSON object"
    if method == "classification":
        return _check_classification(obj)
    if method == "token_classification":
        return _check_tagged(obj)
    if "messages" in obj:
        if "prompt" in obj or "completion" in obj:
            return "give either messages or prompt and completion, not both"
        return _check_messages(obj["messages"])
    if "prompt" not in obj and "completion" not in obj:
        return "missing field 'messages' (chat) or 'prompt' and 'completion'"
    for name in ("prompt", "completion"):
        if name not in obj:
            return f"missing field '{name}'"
        if not isinstance(obj[name], str):
            return f"'{name}' must be a string"
    if not obj["completion"]:
        return "'completion' must not be empty"
    return None


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    trained = False
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return f"{where} must be an object"
        if m.get("role") not in ROLES:
            return f"{where}.role must be one of: {', '.join(ROLES)}"
        if "content" not in m:
            return f"missing field '{where}.content'"
        if not isinstance(m["content"], str):
            return f"{where}.content must be a string"
        if "weight" in m:
            if m["role"] != "assistant":
                return f"{where}.weight is only for assistant messages"
            if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                return f"{where}.weight must be 0 or 1"
        if m["role"] == "assistant" and m.get("weight", 1) == 1 and m["content"]:
            trained = True
    if not trained:
        return "no assistant message to learn from (one with content and weight 1)"
    return None


def read_examples(path: Path, method: str = "lora") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, example) for every example in the file; DatasetError at the first bad line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError(number, "not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DatasetError(number, f"invalid JSON ({exc})") from None
            reason = check_example(obj, method)
            if reason is not None:
                raise DatasetError(number, reason)
            yield number, obj


def check_file(path: Path, method: str = "lora") -> Summary:
    chat = plain = 0
    labels: set[str] = set()
    for _, obj in read_examples(path, method):
        if "messages" in obj:
            chat += 1
        else:
            plain += 1
        if method != "lora":
            labels.update(labels_of(obj, method))
    if chat + plain == 0:
        raise DatasetError(None, "the file holds no examples")
    return Summary(chat + plain, chat, plain, tuple(sorted(labels)))
