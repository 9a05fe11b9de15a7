"""``cxrlab serve``, ``cxrlab export`` and ``cxrlab bench``: thin wrappers over cxrlab.serve / cxrlab.export."""

from __future__ import annotations

import json
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
) -> None:
    """Export a run's model(s) to ONNX in the run directory and check parity with PyTorch."""
    from cxrlab.export import export_run

    reports = export_run(run, fmt=fmt, tolerance=tolerance)
    for r in reports:
        console.print(f"{r.name}: {r.onnx_path}  max |diff| = {r.max_abs_diff:.3g} (tolerance {r.tolerance:g}) "
                      f"on {r.n_samples} sample(s) — parity ok")


def bench_cmd(
    data: Path = typer.Option(Path("../shared/data"), help="folder with real images (manifest.csv folders)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="SERVICE.yaml whose models to time"),
    n_images: int = typer.Option(64, help="images to time"),
    out: Path = typer.Option(Path("docs/benchmarks/service.md"), help="markdown report"),
    json_out: Path = typer.Option(Path("bench/results/end_to_end.json"), help="raw figures"),
    requests: int = typer.Option(200, help="load-test requests"),
    concurrency: int = typer.Option(8, help="load-test concurrency"),
) -> None:
    """End-to-end benchmark: stage timings, batch throughput, latency per backend, FLOP/s, load test."""
    from cxrlab.serve.benchmark import run_benchmark

    result = run_benchmark(data=data, config=config, n_images=n_images, out_md=out, out_json=json_out,
                           n_requests=requests, concurrency=concurrency, on_step=lambda m: console.log(m))
    console.print(json.dumps(result["summary"], indent=2))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("export")(export_cmd)
    app.command("bench")(bench_cmd)
