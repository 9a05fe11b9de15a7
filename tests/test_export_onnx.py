"""ONNX export of real (tiny) run directories: parity with PyTorch, failure above tolerance, the CLI, and the
three inference backends giving the same answers through the service's stages."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert set(list_backends()) == {"torch-fp32", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16",
                                    "openvino-int8", "fastest"}
    assert {"torch-fp32", "onnxruntime", "openvino", "fastest"} <= set(available_backends())
    with pytest.raises(ConfigError, match="unknown inference backend"):
        create_backend("tensorrt", torch.nn.Identity(), sample=torch.zeros(1))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch-bf16", "openvino", "openvino-bf16", "fastest"])
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
    exact = backend in ("onnxruntime", "openvino")
    tol = 1e-3 if exact else 0.1  # bf16 keeps ~3 significant digits; fastest may pick a bf16 engine
    for c, p in ref["diagnosis"]["probabilities"].items():
        assert abs(got["diagnosis"]["probabilities"][c] - p) <= tol
    assert abs(got["icu"]["risk"] - ref["icu"]["risk"]) <= tol
    if exact:  # same masks up to a handful of boundary pixels
        assert got["quality"]["lung_fraction"] == pytest.approx(ref["quality"]["lung_fraction"], abs=2e-3)


def test_fastest_times_every_engine_and_rejects_disagreeing_ones(monkeypatch):
    from cxrlab.export import backends

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    sample = torch.rand(1, 1, 32, 32)
    engine, choice = backends.choose_fastest(net, sample=sample, candidates=["torch-fp32", "onnxruntime", "openvino"])
    assert set(choice["median_ms"]) == {"torch-fp32", "onnxruntime", "openvino"} and not choice["rejected"]
    assert choice["chosen"] == min(choice["median_ms"], key=choice["median_ms"].get)
    assert engine.engine == choice["chosen"]
    torch.testing.assert_close(engine(sample), net(sample), atol=1e-4, rtol=1e-4)

    # an engine whose outputs are off is never chosen, however fast
    class Wrong(torch.nn.Module):
        engine = "wrong"
        seconds = 0.0

        def forward(self, x):
            return net(x) + 1.0

    monkeypatch.setitem(backends.BACKENDS._entries, "wrong", lambda m, **kw: Wrong())
    _, choice = backends.choose_fastest(net, sample=sample, candidates=["torch-fp32", "wrong"])
    assert choice["chosen"] == "torch-fp32" and "wrong" in choice["rejected"]


def test_segmenters_accept_an_engine_by_its_masks(monkeypatch):
    """Logits 0.5 off far from the threshold leave the mask as it is (a bf16 engine): accepted for a segmenter,
    refused by the default value tolerance; a mask that moves is refused."""
    from cxrlab.export import backends

    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[0, 0, 1, 1], net.weight[1, 0, 1, 1] = 200.0, -200.0
        net.bias[:] = torch.tensor([-100.0, 100.0])  # steep logits: a 0.3 shift moves 0.15 % of the pixels
    sample = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))

    def shifted(delta, moved_pixels=0):
        class Shifted(torch.nn.Module):
            engine, seconds = f"shift{delta}", 0.0

            def forward(self, x):
                out = net(x) + delta
                if moved_pixels:
                    out[:, 0].view(-1)[:moved_pixels] *= -1  # flip the sign of some logits: masks move
                return out
        return lambda m, **kw: Shifted()

    monkeypatch.setitem(backends.BACKENDS._entries, "close", shifted(0.3))
    monkeypatch.setitem(backends.BACKENDS._entries, "moved", shifted(0.0, moved_pixels=200))
    _, by_value = backends.choose_fastest(net, sample=sample, candidates=["torch-fp32", "close", "moved"])
    assert set(by_value["rejected"]) == {"close", "moved"}
    _, by_mask = backends.choose_fastest(net, sample=sample, candidates=["torch-fp32", "close", "moved"],
                                         agree=backends.mask_agreement(0.5))
    assert "close" in by_mask["accepted"] and "mask Dice" in by_mask["accepted"]["close"]
    assert "moved" in by_mask["rejected"] and "<" in by_mask["rejected"]["moved"]


def test_an_empty_reference_mask_judges_no_reduced_precision_engine():
    """A disease network on a clear film draws nothing: every engine "agrees" on an empty mask, so only fp32
    engines pass on that sample, and a reduced-precision one needs agreement measured on real images."""
    from cxrlab.export import backends

    empty = [torch.full((1, 1, 16, 16), -12.0)]  # fp32 logits: no pixel reaches the cut
    agree = backends.mask_agreement(0.5)
    assert agree(empty, empty, "onnxruntime")[0] and agree(empty, empty, "openvino")[0]
    ok, why = agree(empty, empty, "openvino-bf16")
    assert not ok and "cannot be judged" in why
    with_record = backends.mask_agreement(0.5, evidence={"openvino-int8": 0.991, "openvino-bf16": 0.95})
    ok, why = with_record(empty, empty, "openvino-int8")
    assert ok and "0.9910 >= 0.98" in why
    assert not with_record(empty, empty, "openvino-bf16")[0]
    # a sample with a mask is judged on it, evidence or not
    drawn = [torch.where(torch.arange(256).view(1, 1, 16, 16) < 128, 12.0, -12.0)]
    assert with_record([drawn[0].clone()], drawn, "openvino-bf16")[0]
    assert not agree([empty[0]], drawn, "onnxruntime")[0]


def test_openvino_parity_on_a_run_export(service_runs, tmp_path):
    """OpenVINO compiles the graph `cxrlab export` wrote; fp32 matches PyTorch like onnxruntime does."""
    import shutil

    from cxrlab.serve.stages import STAGES

    run = tmp_path / "icu"
    shutil.copytree(service_runs["icu"], run)
    export_run(run)
    ref = STAGES.create("icu", run, backend="torch-fp32")
    got = STAGES.create("icu", run, backend="openvino")
    assert got.fast.onnx_path == run / "model.onnx" and got.card()["engine"]["name"] == "openvino"
    x = torch.rand(2, *ref.sample.shape[1:])
    torch.testing.assert_close(got.fast(x), ref.fast(x), atol=1e-4, rtol=1e-4)


OPENVINO_TEARDOWN = r"""
import gc, signal, subprocess, sys, faulthandler
import torch
from cxrlab.export import backends

faulthandler.enable()  # as pytest does: Python's own alternate signal stack is in place first
net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()).eval()
sample = torch.rand(1, 1, 16, 16)
first = backends.create_backend("openvino", net, sample=sample)
second = backends.create_backend("openvino", net, sample=sample)
del first; gc.collect()   # freed in creation order, not the reverse
del second; gc.collect()
signal.signal(signal.SIGCHLD, lambda *a: None)  # torch's DataLoader installs one like it
subprocess.run([sys.executable, "-c", "pass"], check=True)
print("survived")
"""


def test_openvino_models_freed_in_any_order_leave_signal_handling_intact():
    """Each OpenVINO Core used to install its own alternate signal stack and restore its predecessor's on release:
    two models freed in creation order left the thread on a freed stack, and the next handled signal (SIGCHLD of
    a finished subprocess) killed the process with SIGSEGV (the test suite died that way)."""
    res = subprocess.run([sys.executable, "-c", OPENVINO_TEARDOWN], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "survived" in res.stdout, (res.returncode, res.stderr[-2000:])


def test_openvino_batches_split_across_streams_keep_order_and_values(monkeypatch):
    """A batch runs as chunks on a throughput graph (one stream per thread): the outputs come back in the batch's
    order, keyed as the module's, equal to the one-stream path."""
    from cxrlab.export.backends import OpenVinoModule

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

        def forward(self, x):
            f = self.conv(x)
            return {"pooled": f.mean(dim=(2, 3)), "map": f}

    torch.manual_seed(0)
    net = TwoHeads().eval()
    x = torch.rand(7, 1, 24, 24, generator=torch.Generator().manual_seed(3))  # 7: chunks of unequal size
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    engine = create_backend("openvino", net, sample=x[:1])
    assert engine.threads == 2
    split = engine(x)
    assert engine._batch_queue is not None  # the batch really went through the streams
    monkeypatch.setattr(OpenVinoModule, "streams_for_batches", False)
    whole = engine(x)
    with torch.no_grad():
        ref = net(x)
    for key in ("pooled", "map"):
        torch.testing.assert_close(split[key], whole[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split[key], ref[key], atol=1e-4, rtol=1e-4)
