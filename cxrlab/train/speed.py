"""CPU speed switches: bf16 autocast and channels-last memory format, each with an fp32 / off fallback."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_amx() -> bool:
    """AMX tiles: where bf16 autocast clearly pays off on a CPU."""
    return "amx_bf16" in _cpu_flags()


def resolve_precision(precision: str) -> str:
    # Measured (docs/benchmarks/learning.md): on AVX512-BF16 without AMX, bf16 autocast gains little for these
    # small convolutional nets and slows channels-last down, so ``auto`` picks bf16 only with AMX.
    return ("bf16" if cpu_has_amx() else "fp32") if precision == "auto" else precision


def resolve_channels_last(setting: str | bool) -> bool:
    # channels-last lets oneDNN use its blocked convolution kernels on AVX-512 / AMX CPUs (1.45x measured)
    if setting == "auto":
        flags = _cpu_flags()
        return "avx512f" in flags or "amx_bf16" in flags
    return bool(setting)


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
