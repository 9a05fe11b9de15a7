"""The service's diagnosis heatmap from the forward pass (#14): for a GAP + linear head the backend returns the
last feature map beside the logits and CAM replaces Grad-CAM's backward pass; the maps must equal the Grad-CAM
path's on every backend, and heads where the reduction does not hold keep the backward pass."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlab.export.cam import CAM_ONNX, FeatureTap
from cxrlab.serve.pipeline import decode_upload
from cxrlab.data.phantom import render_sample
from cxrlab.serve.samples import encode_png
from cxrlab.serve.stages import DiagnosisStage


class BackwardDiagnosisStage(DiagnosisStage):
    """The same stage with the forward path switched off: Grad-CAM's backward pass, as before #14."""

    def _forward_cam_weight(self):
        return None


def _cases(n: int = 3) -> list[Case]:
    images = [render_sample(c, severity=0.6, size=128, seed=10 + i)
              for i, c in enumerate(["covid19", "normal", "bacterial"][:n])]
    return [decode_upload(encode_png(im["image"]), max_pixels=50_000_000, min_side=64) for im in images]


def _heatmaps(stage, cases):
    stage.run(cases, heatmap=True)
    return [c.heatmap for c in cases], [c.report for c in cases]


@pytest.mark.parametrize("backend", ["torch-fp32", "onnxruntime"])
def test_forward_heatmaps_equal_gradcam(service_runs, backend):
    run = service_runs["diagnosis"]
    forward = DiagnosisStage(run, backend=backend)
    backward = BackwardDiagnosisStage(run, backend="torch-fp32")
    assert forward.cam_weight is not None, "the tiny diagnosis run has a GAP + linear head"
    assert isinstance(forward.fast, FeatureTap) and backward.cam_weight is None
    maps_f, reports_f = _heatmaps(forward, _cases())
    maps_b, reports_b = _heatmaps(backward, _cases())
    for mf, mb, rf, rb in zip(maps_f, maps_b, reports_f, reports_b):
        assert rf["diagnosis"]["predicted"] == rb["diagnosis"]["predicted"]
        assert mf is not None and mf.shape == mb.shape
        assert np.abs(mf - mb).max() < 1e-3
        assert rf["heatmap"]["concordance"] == pytest.approx(rb["heatmap"]["concordance"], abs=1e-3)
        assert rf["heatmap"]["computed"].startswith("forward") and rb["heatmap"]["computed"].startswith("backward")
        probs_f, probs_b = rf["diagnosis"]["probabilities"], rb["diagnosis"]["probabilities"]
        assert max(abs(probs_f[k] - probs_b[k]) for k in probs_f) < 1e-4


def test_other_cam_methods_keep_the_backward_pass(service_runs):
    stage = DiagnosisStage(service_runs["diagnosis"], backend="torch-fp32", cam_method="gradcam++")
    assert stage.cam_weight is None and not isinstance(stage.fast, FeatureTap)
    (heat,), (report,) = _heatmaps(stage, _cases(1))
    assert heat is not None and report["heatmap"]["computed"].startswith("backward")


def test_export_writes_the_feature_map_graph(service_runs, tmp_path):
    import shutil

    from cxrlab.export.runs import export_run

    run = tmp_path / "diagnosis"
    shutil.copytree(service_runs["diagnosis"], run)
    reports = export_run(run)
    assert (run / CAM_ONNX).is_file() and all(r.passed for r in reports)
    stage = DiagnosisStage(run, backend="onnxruntime")  # picks up the exported graph
    assert stage.fast.engine.onnx_path == run / CAM_ONNX
