"""CPU speed switches: bf16 autocast and channels-last memory format, each with an fp32 / off fallback."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX): where bf16 autocast pays off on a CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    return ("bf16" if cpu_has_bf16() else "fp32") if precision == "auto" else precision


def resolve_channels_last(setting: str | bool) -> bool:
    # channels-last helps oneDNN convolutions, most of all together with bf16
    return cpu_has_bf16() if setting == "auto" else bool(setting)


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
