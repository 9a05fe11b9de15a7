"""ONNX export of real (tiny) run directories: parity with PyTorch, failure above tolerance, the CLI, and the
three inference backends giving the same answers through the service's stages."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.data.phantom import render_sample
from cxrlab.errors import ConfigError
from cxrlab.export import ParityError, available_backends, create_backend, export_run, list_backends
from cxrlab.serve.samples import encode_png



@pytest.mark.parametrize("role", ["lung", "diagnosis", "icu", "opacity"])
def test_export_parity(service_runs, role):
    reports = export_run(service_runs[role], tolerance=1e-3)
    # a diagnosis run's heatmap comes from the forward pass: its feature-map graph is exported as well
    assert [r.name for r in reports] == ([role, f"{role}+cam"] if role == "diagnosis" else [role])
    assert all(r.passed for r in reports)
    r = reports[0]
    assert r.passed and 0 <= r.max_abs_diff <= 1e-3 and r.n_samples == 2
    onnx_dir = service_runs[role] / "disease" if role == "opacity" else service_runs[role]
    assert (onnx_dir / "model.onnx").is_file()
    saved = json.loads((service_runs[role] / "export.json").read_text())
    assert saved["role"] == role and saved["models"][0]["max_abs_diff"] == r.max_abs_diff


def test_export_fails_above_tolerance(service_runs, tmp_path):
    # a tolerance below float32 rounding cannot be met by any real graph: the export must fail and leave no
    # graph behind for the onnxruntime backend to pick up
    import shutil

    run = tmp_path / "diagnosis"
    shutil.copytree(service_runs["diagnosis"], run)
    (run / "model.onnx").unlink(missing_ok=True)
    with pytest.raises(ParityError, match="tolerance"):
        export_run(run, tolerance=1e-12)
    assert not (run / "model.onnx").exists()
    with pytest.raises(ConfigError, match="format"):
        export_run(run, fmt="tflite")


def test_cli_export(service_runs):
    result = CliRunner().invoke(app, ["export", str(service_runs["diagnosis"]), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "max |diff|" in text and "parity ok" in text


def test_backends_registry_and_outputs():
    assert set(list_backends()) == {"torch-fp32", "torch-bf16", "onnxruntime"}
    assert {"torch-fp32", "onnxruntime"} <= set(available_backends())
    with pytest.raises(ConfigError, match="unknown inference backend"):
        create_backend("tensorrt", torch.nn.Identity(), sample=torch.zeros(1))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch-bf16"])
def test_backends_agree_with_fp32_in_the_pipeline(service_runs, backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not available on this CPU")
    from cxrlab.serve.config import load_service_config
    from cxrlab.serve.pipeline import AnalysisPipeline

    cfg = load_service_config(service_runs["config"])
    data = encode_png(render_sample("viral", severity=0.6, size=128, seed=5)["image"])
    ref = AnalysisPipeline.from_config(cfg).analyze(data).report
    got = AnalysisPipeline.from_config(cfg.model_copy(update={"backend": backend})).analyze(data).report
    assert got["backend"] == backend
    tol = 1e-3 if backend == "onnxruntime" else 0.1  # bf16 keeps ~3 significant digits
    for c, p in ref["diagnosis"]["probabilities"].items():
        assert abs(got["diagnosis"]["probabilities"][c] - p) <= tol
    assert abs(got["icu"]["risk"] - ref["icu"]["risk"]) <= tol
    if backend == "onnxruntime":  # same masks up to a handful of boundary pixels
        assert got["quality"]["lung_fraction"] == pytest.approx(ref["quality"]["lung_fraction"], abs=2e-3)
