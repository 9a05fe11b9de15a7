"""``cxrlab serve``, ``cxrlab export`` and ``cxrlab bench``: thin wrappers over cxrlab.serve / cxrlab.export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console
from cxrlab.errors import ConfigError


def serve_cmd(
    runs: list[Path] = typer.Argument(None, help="run directories (role read from each run's recipe)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="SERVICE.yaml"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1; others need a token)"),
    port: Optional[int] = typer.Option(None, help="port (default 8000)"),
    backend: Optional[str] = typer.Option(None, help="torch-fp32, torch-bf16 or onnxruntime"),
) -> None:
    """Serve the analysis API and the viewer (Ctrl-C stops it). Token: $CXRLAB_SERVICE_TOKEN."""
    from cxrlab.serve.config import config_from_runs, load_service_config
    from cxrlab.serve.runner import serve
    from cxrlab.serve.stages import detect_role

    if config is not None and runs:
        raise ConfigError("give either --config or run directories, not both")
    if config is not None:
        cfg = load_service_config(config, host=host, port=port, backend=backend)
    elif runs:
        roles: dict[str, Path] = {}
        for run in runs:
            role = detect_role(run)
            if role in roles:
                raise ConfigError(f"two {role} runs given ({roles[role]}, {run}); use --config to choose")
            roles[role] = run
        cfg = config_from_runs(roles, host=host, port=port, backend=backend)
    else:
        raise ConfigError("nothing to serve: give --config SERVICE.yaml or run directories")
    stages = ", ".join(cfg.models.present()) or "none"
    console.print(f"cxrlab service on http://{cfg.host}:{cfg.port}/ (stages: {stages}; backend {cfg.backend}); "
                  "Ctrl-C stops it. Research use only, not for diagnosis.")
    serve(cfg)


def export_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    fmt: str = typer.Option("onnx", "--format", help="export format (onnx)"),
    tolerance: float = typer.Option(1e-3, help="largest accepted |PyTorch - ONNX| output difference"),
    int8: bool = typer.Option(False, "--int8", help="also write a calibrated int8 graph (segmentation runs) for "
                                                     "the openvino-int8 backend"),
    calibration: Optional[Path] = typer.Option(None, help="manifest of calibration images for --int8 (default: "
                                                           "the run's own training images)"),
    calibration_images: int = typer.Option(32, min=1, help="images that calibrate --int8"),
    check_images: int = typer.Option(16, min=1, help="other images on which --int8 masks are checked against fp32"),
) -> None:
    """Export a run's model(s) to ONNX in the run directory and check parity with PyTorch (--int8: then an
    int8 graph calibrated on real images, with its mask agreement with fp32)."""
    from cxrlab.export import export_run

    if calibration is not None and not int8:
        raise ConfigError("--calibration is for --int8")
    if int8:
        from cxrlab.export.runs import check_int8_request

        check_int8_request(run, calibration)
    reports = export_run(run, fmt=fmt, tolerance=tolerance)
    for r in reports:
        console.print(f"{r.name}: {r.onnx_path}  max |diff| = {r.max_abs_diff:.3g} (tolerance {r.tolerance:g}) "
                      f"on {r.n_samples} sample(s) — parity ok")
    if int8:
        from cxrlab.export.runs import quantize_run

        for q in quantize_run(run, calibration=calibration, n_calibration=calibration_images,
                              n_check=check_images):
            a = q["agreement_with_fp32"]
            dice = ", ".join(f"{c} {p:.4f} (per image min {m:.3f})"
                             for c, p, m in zip(a["channels"], a["pooled"], a["per_image_min"]))
            console.print(f"{q['name']}: {q['xml']}  int8 mask Dice vs fp32 on {a['images']} other image(s): {dice}")


def bench_cmd(
    ctx: typer.Context,
) -> None:
    """End-to-end benchmark (options: see ``cxrlab bench --help``): stage timings, batch throughput and latency
    per backend, TorchXRayVision reference, FLOP/s, loopback load test → docs/benchmarks/service.md."""
    import os
    import subprocess
    import sys

    # A fresh interpreter, because OMP_WAIT_POLICY is read once when torch loads libgomp: passive waiting keeps
    # 2-thread inference from collapsing when the CPU is shared.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    code = subprocess.call([sys.executable, "-m", "cxrlab.serve.benchmark", *ctx.args], env=env)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("export")(export_cmd)
    app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                           "help_option_names": []})(bench_cmd)
