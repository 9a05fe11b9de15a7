"""What this machine is and can do, for benchmark records: CPU model, load, measured GEMM peak, model FLOPs; and
``restores_torch_threads``, which keeps a trainer's thread setting from outliving it.

Shared by the service benchmark and the scripts under ``bench/`` so every page describes the machine the same way.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import subprocess
import time
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def restores_torch_threads(fn: F) -> F:
    """Run ``fn`` and put torch's intra-op thread count back as it found it: a trainer that sets its recipe's
    ``threads`` must not leave the caller (a notebook, a comparison that times the model next) on that count."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper  # type: ignore[return-value]


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default: active spinning)"),
            "python": platform.python_version(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def gemm_peak(dtype: torch.dtype, n: int = 1024, trials: int = 15, per_trial: int = 3) -> float:
    """Measured dense matmul FLOP/s (``2 n^3`` per product) for ``dtype``: the best of ``trials`` short timings,
    so that other processes on a shared CPU disturb the peak as little as possible."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(per_trial):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 * per_trial / best


def count_flops(module: torch.nn.Module, sample: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``sample`` (PyTorch's FlopCounterMode; a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.eval()(sample)
    return int(counter.get_total_flops())
