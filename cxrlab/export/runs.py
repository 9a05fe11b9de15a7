"""``cxrlab export RUN --format onnx``: every network of a run directory to ONNX, with a parity check.

The run is loaded the way the service loads it (``cxrlab.serve.stages``), so what is exported is exactly the
module the ``onnxruntime`` backend will replace. Each ONNX file lands next to its checkpoint
(``<run>/model.onnx``; a severity run's disease model in ``<run>/disease/model.onnx``; a classifier whose
heatmap comes from the forward pass also ``<run>/model_cam.onnx``, see ``cxrlab.export.cam``) and the parity report
in ``<run>/export.json``. Parity inputs: seeded uniform images in [0, 1] at the model's input size, batches of
1 and 3 (the dynamic batch axis is exercised too).

``--int8`` (segmentation runs) then quantizes each segmentation network on real inputs
(:func:`quantize_run`, :mod:`cxrlab.export.quantize`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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


#: roles whose networks ``--int8`` quantizes. Classifiers are left out: on 64 real films the diagnosis probe's top
#: class already changes on 9.4 % of them under OpenVINO bf16 (``bench/int8_calibration.py``).
INT8_ROLES = ("lung", "opacity")


def check_int8_request(run_dir: str | Path, calibration: str | Path | None) -> None:
    """Refuse an ``--int8`` request that cannot succeed before anything is exported (a classifier run, a
    calibration manifest that is not there)."""
    from cxrlab.errors import InputError
    from cxrlab.serve.stages import detect_role

    role = detect_role(run_dir)
    if role not in INT8_ROLES:
        raise ConfigError(f"{run_dir}: --int8 is offered for segmentation runs ({', '.join(INT8_ROLES)}), not for "
                          f"a {role} run")
    if calibration is not None and not Path(calibration).exists():
        raise InputError(calibration, "calibration manifest does not exist", field="--calibration")


def calibration_images(model_dir: Path, manifest: str | Path | None, n: int, seed: int = 0) -> list[str]:
    """``n`` image paths (seeded draw): from ``manifest`` when given, else the run's own *training* images
    (``split.csv``, part ``train``; never val/test, whose figures the int8 graph is later judged on)."""
    from cxrlab.data import schema
    from cxrlab.data.splits import SPLIT, load_split

    if manifest is not None:
        from cxrlab.data.manifest import load_manifest

        paths = load_manifest(manifest).df[schema.IMAGE].astype(str).tolist()
        where = str(manifest)
    else:
        split_file = model_dir / "split.csv"
        if not split_file.is_file():
            raise ConfigError(f"{model_dir}: no split.csv to draw training images from; give --calibration MANIFEST")
        df = load_split(split_file)
        paths = df.loc[df[SPLIT] == "train", schema.IMAGE].astype(str).tolist()
        where = f"{split_file} (train part)"
    if len(paths) < n:
        raise ConfigError(f"{where}: {len(paths)} image(s), the int8 calibration and its check need {n}")
    rng = np.random.default_rng(seed)
    return [paths[i] for i in sorted(rng.choice(len(paths), size=n, replace=False))]


def _dice_by_channel(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Mask agreement (N×K boolean maps): pooled Dice per channel, and the per-image mean and minimum."""
    inter, total = (a & b).sum(axis=(2, 3)), a.sum(axis=(2, 3)) + b.sum(axis=(2, 3))
    per_image = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    pooled = np.where(total.sum(0) > 0, 2 * inter.sum(0) / np.maximum(total.sum(0), 1), 1.0)
    return {"pooled": pooled.round(4).tolist(), "per_image_mean": per_image.mean(0).round(4).tolist(),
            "per_image_min": per_image.min(0).round(4).tolist()}


def quantize_run(run_dir: str | Path, *, calibration: str | Path | None = None, n_calibration: int = 32,
                 n_check: int = 16, preset: str = "performance", seed: int = 0) -> list[dict[str, Any]]:
    """int8 graphs for the run's segmentation network(s), next to their (fresh) ``model.onnx``.

    Inputs are prepared as the service prepares them (Stage II gets Stage I's predicted lungs, in the lung
    output the severity run was fitted with). ``n_calibration`` images calibrate; ``n_check`` other images
    measure the int8 masks against PyTorch fp32's (recorded in ``int8.json``, returned)."""
    from cxrlab.anatomy.predict import LungSegmenter
    from cxrlab.data import schema
    from cxrlab.export.backends import create_backend
    from cxrlab.export.onnx import fresh_onnx
    from cxrlab.export.quantize import int8_paths, quantize_int8
    from cxrlab.io import read_image
    from cxrlab.serve.stages import create_stage, detect_role

    run_dir = Path(run_dir)
    check_int8_request(run_dir, calibration)
    stage = create_stage(detect_role(run_dir), run_dir, backend="torch-fp32")
    segmenter, model_dir = stage.segmenter, stage.model_dir
    onnx_path = fresh_onnx(model_dir)
    if onnx_path is None:
        raise ConfigError(f"{model_dir}: no model.onnx newer than the checkpoint; export it first (cxrlab export RUN)")
    paths = calibration_images(model_dir, calibration, n_calibration + n_check, seed)
    images = [read_image(p)[0] for p in paths]
    lungs = None
    if segmenter.in_channels == 2:
        if getattr(stage, "lung_run", None) is None:
            raise ConfigError(f"{run_dir}: the disease model takes lungs as input; quantize it through its severity "
                              "run directory (which names the lung run)")
        stage_one = LungSegmenter.from_run(stage.lung_run, precision="fp32", convention=stage.lung_output)
        lungs = [m[schema.KEY_LUNG_MASK] for m in stage_one.predict_batch(images)]
    x = segmenter.network_inputs(images, lungs)
    info = {"calibration": str(calibration) if calibration else f"{model_dir / 'split.csv'} (train part)",
            "calibration_images": paths[:n_calibration], "check_images": paths[n_calibration:], "seed": seed}
    quantize_int8(onnx_path, x[:n_calibration], preset=preset, info=info)
    # what a user sees is the mask: int8 masks vs fp32 masks on the check images, channels the segmenter returns
    check = torch.from_numpy(x[n_calibration:])
    engine = create_backend("openvino-int8", segmenter.model, sample=check[:1], onnx_path=onnx_path)
    seen = [segmenter.config.channels.index(c) for c in segmenter.needed_channels()]
    with torch.no_grad():
        ref = torch.sigmoid(segmenter.model(check)[:, seen]).numpy() >= segmenter.config.threshold
        got = torch.sigmoid(engine(check)[:, seen]).numpy() >= segmenter.config.threshold
    agreement = {"channels": [segmenter.config.channels[i] for i in seen], "images": len(check),
                 **_dice_by_channel(got, ref)}
    info_path = int8_paths(onnx_path)[2]
    atomic_write_json(info_path, json.loads(info_path.read_text()) | {"agreement_with_fp32": agreement})
    return [{"name": stage.role, "xml": str(int8_paths(onnx_path)[0]), "agreement_with_fp32": agreement}]
