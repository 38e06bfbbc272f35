"""What this worker runs on, normalised to a GPU type that names its queues."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

GIB = 1024**3


@dataclass(frozen=True)
class Hardware:
    gpu_type: str
    gpu_name: str | None
    device: str
    memory_total_bytes: int | None

    def memory_free_bytes(self) -> int | None:
        if self.device.startswith("cuda"):
            free, _total = torch.cuda.mem_get_info()
            return int(free)
        return _cpu_available()


def normalise_gpu_name(name: str, memory_bytes: int) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'NVIDIA A100-SXM4-40GB' -> 'a100-40gb'."""
    n = name.lower().replace("nvidia", "").replace("geforce", "").strip()
    if "a100" in n:
        return "a100-80gb" if memory_bytes > 60 * GIB else "a100-40gb"
    for t, pattern in (
        ("gh200", r"gh200"), ("h200", r"h200"), ("h100", r"h100"), ("b200", r"b200"), ("l40s", r"l40s"),
        ("l40", r"l40"), ("l4", r"\bl4\b"), ("a10g", r"a10g"), ("a10", r"\ba10\b"), ("a6000", r"a6000"),
        ("rtx4090", r"4090"), ("rtx3090", r"3090"), ("v100", r"v100"), ("t4", r"\bt4\b"),
    ):
        if re.search(pattern, n):
            return t
    return re.sub(r"[^a-z0-9]+", "-", n).strip("-") or "gpu"


def _cpu_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None


def detect(gpu_type: str | None = None, device: str | None = None) -> Hardware:
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        props = torch.cuda.get_device_properties(0)
        detected = normalise_gpu_name(props.name, props.total_memory)
        return Hardware(gpu_type or detected, props.name, "cuda", int(props.total_memory))
    return Hardware(gpu_type or "cpu", None, "cpu", _cpu_total())
