"""int8 (NNCF + OpenVINO): parity with PyTorch on a small net, `cxrlab export RUN --int8` on a real (tiny) severity
run, the backend refusing a missing or stale int8 graph (and `fastest` passing over it), classifier runs refused,
and the installed command's errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.errors import ConfigError
from cxrlab.export import available_backends, create_backend, export_run
from cxrlab.export.quantize import INT8_INFO, INT8_XML, fresh_int8, int8_supported, quantize_int8

needs_int8 = pytest.mark.skipif(not ("openvino-int8" in available_backends() and int8_supported()),
                                reason="this CPU has no int8 dot products (VNNI/AMX): the int8 backend is not offered")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 2, 3, padding=1)).eval()


@needs_int8
def test_int8_graph_matches_torch_within_int8_rounding(tmp_path):
    from cxrlab.export.onnx import export_module

    net, gen = _net(), torch.Generator().manual_seed(1)
    calibration = torch.rand(8, 1, 32, 32, generator=gen)
    onnx = export_module(net, calibration[:1], tmp_path / "model.onnx")
    xml = quantize_int8(onnx, calibration.numpy(), info={"note": "test"})
    assert xml == tmp_path / INT8_XML and xml.with_suffix(".bin").is_file()
    info = json.loads((tmp_path / INT8_INFO).read_text())
    assert info["calibration_inputs"] == 8 and info["note"] == "test" and len(info["onnx_sha256"]) == 64
    assert fresh_int8(onnx) == xml

    engine = create_backend("openvino-int8", net, sample=calibration[:1], onnx_path=onnx)
    assert engine.engine == "openvino-int8"
    x = torch.rand(4, 1, 32, 32, generator=gen)
    with torch.no_grad():
        ref, got = net(x), engine(x)
    scale = float(ref.abs().max())
    # 8-bit weights and activations: ~1 % of the output range, far from fp32-exact but far from garbage
    assert float((got - ref).abs().max()) <= 0.05 * scale
    assert float((got - ref).abs().mean()) <= 0.01 * scale
    assert not torch.equal(got, ref)  # it really is another arithmetic, not the fp32 graph

    # a different ONNX file beside it (re-export): the int8 graph is stale and refused
    onnx.write_bytes(onnx.read_bytes() + b" ")
    assert fresh_int8(onnx) is None
    with pytest.raises(ConfigError, match="int8"):
        create_backend("openvino-int8", net, sample=calibration[:1], onnx_path=onnx)


def test_quantize_refuses_bad_calibration(tmp_path):
    with pytest.raises(ConfigError, match="N×C×H×W"):
        quantize_int8(tmp_path / "model.onnx", np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ConfigError, match="preset"):
        quantize_int8(tmp_path / "model.onnx", np.zeros((1, 1, 8, 8), np.float32), preset="fast")


@needs_int8
def test_export_int8_on_a_severity_run_and_the_service_uses_it(service_runs, tmp_path):
    from cxrlab.export.runs import quantize_run
    from cxrlab.serve.stages import STAGES

    run = tmp_path / "opacity"
    shutil.copytree(service_runs["opacity"], run)
    export_run(run)
    (result,) = quantize_run(run, n_calibration=3, n_check=2)
    disease_dir = run / "disease"
    assert Path(result["xml"]) == disease_dir / INT8_XML
    info = json.loads((disease_dir / INT8_INFO).read_text())
    # calibrated on the disease run's training images only
    split = {r["image"]: r["split"] for r in __import__("csv").DictReader(open(disease_dir / "split.csv"))}
    assert all(split[p] == "train" for p in info["calibration_images"] + info["check_images"])
    assert not set(info["calibration_images"]) & set(info["check_images"])
    agreement = info["agreement_with_fp32"]
    assert agreement["channels"] == ["mask_disease"] and agreement["images"] == 2
    assert 0.0 <= agreement["per_image_min"][0] <= agreement["per_image_mean"][0] <= 1.0

    stage = STAGES.create("opacity", run, backend="openvino-int8")
    assert stage.card()["engine"]["name"] == "openvino-int8"
    # fastest's evidence for int8 where its phantom sample shows an empty mask: this real-image check
    from cxrlab.severity.engine import int8_evidence

    assert int8_evidence(stage.segmenter) == {"openvino-int8": pytest.approx(min(agreement["pooled"]))}
    fastest = STAGES.create("opacity", run, backend="fastest")
    assert "openvino-int8" in fastest.card()["engine"]["choice"]["median_ms"] \
        or "openvino-int8" in fastest.card()["engine"]["choice"]["rejected"]

    # the int8 graph no longer matches the ONNX beside it: refused by name, passed over by fastest
    info["onnx_sha256"] = "0" * 64
    (disease_dir / INT8_INFO).write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="no calibrated int8 graph"):
        STAGES.create("opacity", run, backend="openvino-int8")
    assert int8_evidence(stage.segmenter) == {}  # a stale graph's record is no evidence
    choice = STAGES.create("opacity", run, backend="fastest").card()["engine"]["choice"]
    assert "no calibrated int8 graph" in choice["rejected"]["openvino-int8"]


def test_int8_is_for_segmentation_runs(service_runs):
    from cxrlab.export.runs import quantize_run

    with pytest.raises(ConfigError, match="segmentation runs"):
        quantize_run(service_runs["diagnosis"])


def test_export_int8_errors_are_one_line(service_runs, tmp_path):
    """Refused before anything is exported; the installed command (one subprocess) prints the reason, no
    traceback."""
    from typer.testing import CliRunner

    from cxrlab.cli.main import app

    run = str(service_runs["opacity"])
    for args, expected in [([run, "--calibration", str(tmp_path / "m.csv")], "--calibration is for --int8"),
                           ([str(service_runs["diagnosis"]), "--int8"], "segmentation runs")]:
        result = CliRunner().invoke(app, ["export", *args])  # main() prints these; here the error itself
        assert isinstance(result.exception, ConfigError) and expected in str(result.exception), result.output
    cxrlab = Path(sys.executable).with_name("cxrlab")
    proc = subprocess.run([str(cxrlab), "export", run, "--int8", "--calibration", str(tmp_path / "missing.csv")],
                          capture_output=True, text=True, timeout=300)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0 and "missing.csv" in out and "does not exist" in out, out
    assert "Traceback" not in out and "parity ok" not in out  # refused before the export


def test_calibration_draws_training_images_only(tmp_path):
    import pandas as pd

    from cxrlab.export.runs import calibration_images

    rows = [{"image": f"/data/{part}_{i}.png", "patient_id": f"{part}{i}", "split": part}
            for part, n in (("train", 6), ("val", 3), ("test", 3)) for i in range(n)]
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    drawn = calibration_images(tmp_path, None, 5, seed=0)
    assert len(drawn) == len(set(drawn)) == 5 and all("/train_" in p for p in drawn)
    assert drawn == calibration_images(tmp_path, None, 5, seed=0)  # seeded
    with pytest.raises(ConfigError, match="6 image"):
        calibration_images(tmp_path, None, 7)
    with pytest.raises(ConfigError, match="--calibration MANIFEST"):
        calibration_images(tmp_path / "elsewhere", None, 2)
