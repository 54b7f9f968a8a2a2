"""Where a benchmark ran, printed beside every figure: the GPU's name, or the CPU's model and kind (AVX512_BF16 /
AVX2: native bf16 or not, ~3x apart in training speed) with the torch threads used."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.exists() else ""


def cpu_model() -> str:
    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
                "")
    return name or platform.processor() or "unknown CPU"


def cpu_kind() -> str:
    flags = _cpuinfo()
    return "AVX512_BF16" if "avx512_bf16" in flags else ("AVX2" if "avx2" in flags else platform.machine())


def where(device: torch.device) -> str:
    """`<n>-thread CPU, <kind>` or the CUDA device's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()}-thread CPU, {cpu_kind()}"
