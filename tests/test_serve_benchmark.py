"""`cxrlab bench` end to end on the tiny service runs: every requested backend and the path before #14 (onnxruntime
with Grad-CAM's backward pass) are timed in one run, and the page reports both with the #14 targets."""

from __future__ import annotations

import json
import shutil

import pytest

from cxrlab.serve.benchmark import BEFORE_14, run_benchmark


@pytest.mark.timeout(600)
def test_benchmark_times_current_and_previous_heatmap_paths(service_runs, tmp_path):
    data = tmp_path / "data" / "phantom"
    data.mkdir(parents=True)
    manifest = service_runs["config"].parent.parent / "service_phantom" / "manifest.csv"
    shutil.copytree(manifest.parent, data, dirs_exist_ok=True)
    out_md, out_json = tmp_path / "service.md", tmp_path / "end_to_end.json"
    result = run_benchmark(data=data.parent, config=service_runs["config"], n_images=4, out_md=out_md,
                           out_json=out_json, n_requests=4, concurrency=2, batch_size=2, backends=["torch-fp32"])
    before = f"{BEFORE_14[0]} ({BEFORE_14[1]} Grad-CAM)"
    assert set(result["backends"]) == {"torch-fp32", before}
    now, then = result["backends"]["torch-fp32"], result["backends"][before]
    assert now["heatmap_pass"] == "auto" and then["heatmap_pass"] == "backward" and then["backend"] == "onnxruntime"
    for timing in (now, then):
        assert timing["latency_with_heatmap"]["n"] == 4 and timing["stage_median_ms"]["heatmap"] > 0
        assert sorted(timing["batch_all"]["roles"]) == ["diagnosis", "lung", "opacity"]
        assert timing["batch_all"]["images_per_s"] > 0
    assert now["engines"]["diagnosis"]["name"] == "torch-fp32"
    assert result["load_test"]["backend"] == "torch-fp32"  # the load test runs the current path only
    page = out_md.read_text()
    assert "backward Grad-CAM" in page and "#14 latency" in page and "lungs + disease + diagnosis" in page
    # the share of the GEMM peak is given for every network of the two-stage batch, the disease network included
    assert all(f"| {m} | torch-fp32 |" in page for m in ("lung", "opacity", "diagnosis"))
    assert json.loads(out_json.read_text())["summary"][before]["batch_all_images_per_s"] > 0
