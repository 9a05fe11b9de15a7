"""Export PyTorch modules to ONNX and check that onnxruntime reproduces PyTorch's outputs."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cxrlab.errors import CxrlabError
from cxrlab.utils import atomic_path

OPSET = 17


class ParityError(CxrlabError):
    """The exported graph's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ParityReport:
    name: str
    onnx_path: str
    max_abs_diff: float
    tolerance: float
    n_samples: int
    input_shape: list[int]
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat_outputs(v)]
    raise TypeError(f"cannot export a model returning {type(out).__name__}")


def export_module(module: nn.Module, sample: torch.Tensor, out_path: str | Path, *, opset: int = OPSET) -> Path:
    """Write ``module`` (eval mode) to ``out_path`` with a dynamic batch axis; written atomically.

    The TorchScript-based exporter is tried first because it takes well under a second for CNNs; the dynamo
    exporter (seconds, but covers more operators) is the fallback.
    """
    module = module.eval()
    out_path = Path(out_path)
    with torch.no_grad():
        template = module(sample)
    n_out = len(_flat_outputs(template))
    if isinstance(template, dict) and all(isinstance(v, torch.Tensor) for v in template.values()):
        output_names = [str(k) for k in template]  # a multi-head model's heads keep their names in the graph
    else:
        output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    with atomic_path(out_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (sample,), str(tmp), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=output_names,
                dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in output_names}},
            )
        except Exception:  # noqa: BLE001 - any failure of the legacy exporter: try the newer one
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(
                module, (sample,), dynamo=True, input_names=["input"], output_names=output_names,
                dynamic_shapes=({0: batch},), optimize=True, verbose=False,
            )
            program.save(str(tmp), external_data=False)
    return out_path


def check_parity(
    module: nn.Module,
    onnx_path: str | Path,
    samples: Sequence[torch.Tensor] | torch.Tensor,
    *,
    tolerance: float = 1e-3,
    name: str = "model",
) -> ParityReport:
    """Run ``samples`` through PyTorch (fp32) and onnxruntime; report the largest absolute output difference."""
    import onnxruntime as ort

    if isinstance(samples, torch.Tensor):
        samples = [samples]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    worst = 0.0
    module = module.eval()
    for x in samples:
        with torch.no_grad():
            ref = [t.float().numpy() for t in _flat_outputs(module(x))]
        got = session.run(None, {input_name: x.numpy().astype(np.float32)})
        if len(got) != len(ref):
            raise ParityError(f"{onnx_path}: ONNX graph has {len(got)} outputs, PyTorch model {len(ref)}")
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise ParityError(f"{onnx_path}: output shape {list(g.shape)} != PyTorch {list(r.shape)}")
            worst = max(worst, float(np.max(np.abs(r - g))) if r.size else 0.0)
    return ParityReport(
        name=name, onnx_path=str(onnx_path), max_abs_diff=worst, tolerance=tolerance, n_samples=len(samples),
        input_shape=list(samples[0].shape), passed=bool(worst <= tolerance),
    )


def fresh_onnx(run_dir: str | Path, name: str = "model.onnx") -> Path | None:
    """``run_dir/<name>`` when ``cxrlab export`` wrote it after the checkpoint, else None (re-export)."""
    run_dir = Path(run_dir)
    onnx_path = run_dir / name
    ckpts = [p for p in (run_dir / "checkpoints").glob("*.pt")] if (run_dir / "checkpoints").is_dir() else []
    if onnx_path.is_file() and all(onnx_path.stat().st_mtime >= p.stat().st_mtime for p in ckpts):
        return onnx_path
    return None
