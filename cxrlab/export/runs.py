"""``cxrlab export RUN --format onnx``: every network of a run directory to ONNX, with a parity check.

The run is loaded the way the service loads it (``cxrlab.serve.stages``), so what is exported is exactly the
module the ``onnxruntime`` backend will replace. Each ONNX file lands next to its checkpoint
(``<run>/model.onnx``; a severity run's disease model in ``<run>/disease/model.onnx``; a classifier whose
heatmap comes from the forward pass also ``<run>/model_cam.onnx``, see ``cxrlab.export.cam``) and the parity report
in ``<run>/export.json``. Parity inputs: seeded uniform images in [0, 1] at the model's input size, batches of
1 and 3 (the dynamic batch axis is exercised too).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxrlab.errors import ConfigError
from cxrlab.export.onnx import ParityError, ParityReport, check_parity, export_module
from cxrlab.utils import atomic_write_json

FORMATS = ("onnx",)


def export_run(run_dir: str | Path, fmt: str = "onnx", tolerance: float = 1e-3, seed: int = 0) -> list[ParityReport]:
    """Export the run's model(s); raise :class:`ParityError` when onnxruntime differs from PyTorch by more than
    ``tolerance`` (max absolute output difference). Returns one report per exported model."""
    from cxrlab.serve.stages import create_stage, detect_role

    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    role = detect_role(run_dir)
    stage = create_stage(role, run_dir, backend="torch-fp32")
    gen = torch.Generator().manual_seed(seed)
    reports = []
    for name, module, sample, onnx_path in getattr(stage, "export_modules", stage.modules)():
        export_module(module, sample, onnx_path)
        samples = [torch.rand((n, *sample.shape[1:]), generator=gen) for n in (1, 3)]
        reports.append(check_parity(module, onnx_path, samples, tolerance=tolerance, name=name))
    atomic_write_json(run_dir / "export.json", {"format": fmt, "role": role,
                                                "models": [r.as_dict() for r in reports]})
    failed = [r for r in reports if not r.passed]
    if failed:
        worst = max(failed, key=lambda r: r.max_abs_diff)
        for r in failed:  # a graph that disagrees with PyTorch must not be picked up by the onnxruntime backend
            Path(r.onnx_path).unlink(missing_ok=True)
        raise ParityError(f"{run_dir}: ONNX output of {worst.name} differs from PyTorch by {worst.max_abs_diff:.3g} "
                          f"> tolerance {worst.tolerance:g}")
    return reports
