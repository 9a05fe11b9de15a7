"""``cxrlab severity train|predict|evaluate|compare``: a thin layer over :mod:`cxrlab.severity`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console, progress, stage_callback
from cxrlab.errors import ConfigError
from cxrlab.severity.compare import DECODERS

severity_app = typer.Typer(help="Two-stage severity scoring: lungs → disease → zone scores.", no_args_is_help=True)


@severity_app.command("train")
def train_cmd(
    config: str = typer.Argument(..., help="recipe name (covid-scoring) or severity config YAML "
                                           "(lung_run, manifests, disease: {...})"),
    set_: list[str] = typer.Option([], "--set", help="override a key, e.g. disease.epochs=5 (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (overrides the config's out)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
) -> None:
    """Train Stage II on disease masks, fit the zone threshold and Brixia cut-points; writes a severity run."""
    from cxrlab.severity.train import train_severity

    overrides = list(set_) + ([f"out={out}"] if out is not None else [])
    with progress() as bar:
        run = train_severity(config, overrides, resume=resume, progress=stage_callback(bar))
    console.print(f"severity run: {run}")
    console.print((run / "scoring.json").read_text())


_BACKEND_HELP = "inference engine of both stages: auto (torch-bf16 where the CPU has bf16, else torch-fp32), " \
                "torch-fp32, torch-bf16, onnxruntime, openvino, openvino-bf16, fastest"


def _pipeline(run: Optional[Path], lung_run: Optional[Path], disease_run: Optional[Path], backend: str):
    from cxrlab.severity.pipeline import SeverityPipeline

    if run is not None:
        if lung_run is not None or disease_run is not None:
            raise ConfigError("give either a severity RUN or --lung-run with --disease-run, not both")
        return SeverityPipeline.from_run(run, backend=backend)
    if lung_run is None or disease_run is None:
        raise ConfigError("give a severity RUN directory, or both --lung-run and --disease-run")
    return SeverityPipeline.from_runs(lung_run, disease_run, backend=backend)


@severity_app.command("predict")
def predict_cmd(
    inputs: list[Path] = typer.Argument(..., help="image files (one JSON record each), or folders of images / "
                                        "manifests (csv/parquet/folder) for batch mode (predictions.csv)"),
    run: Optional[Path] = typer.Option(None, "--run", help="severity run directory (from `severity train`)"),
    lung_run: Optional[Path] = typer.Option(None, "--lung-run", help="Stage I run (with --disease-run)"),
    disease_run: Optional[Path] = typer.Option(None, "--disease-run", help="Stage II run (default scoring)"),
    out: Path = typer.Option(Path("runs/severity_predict"), "--out", help="output folder"),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="write overlay PNGs"),
    batch_size: int = typer.Option(8, help="images per forward pass"),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
    quality: Optional[Path] = typer.Option(None, "--quality", help="quality run (cxrlab quality train): adds "
                                           "quality_* columns, does not score refused images, corrects inverted"),
    keep_failing: bool = typer.Option(False, "--keep-failing", help="score images the gate refuses too"),
) -> None:
    """Masks, overlay PNG and a JSON record per image file; folders and manifests give one predictions.csv."""
    from cxrlab.data import schema
    from cxrlab.data.inputs import resolve_inputs
    from cxrlab.io import read_image

    resolved = resolve_inputs(inputs)  # before the model libraries load: a wrong path fails at once
    pipe = _pipeline(run, lung_run, disease_run, backend)
    if any(p.is_dir() for p in inputs) or resolved.attrs["kind"] != "images":
        with progress() as bar:
            task = bar.add_task("severity", total=len(resolved), status="")
            table = pipe.predict_manifest(resolved, out, overlays=overlay, save_masks=True, batch_size=batch_size,
                                          on_batch=lambda done, total: bar.update(task, completed=done),
                                          quality=quality, keep_failing=keep_failing)
        failed = int(table["error"].notna().sum()) if "error" in table else 0
        console.print(f"{len(table)} images scored ({failed} failed): {out / 'predictions.csv'}")
        return
    gate = None
    if quality is not None:
        from cxrlab.quality import QualityGate

        gate = QualityGate.load(quality)
    for image in resolved.df[schema.IMAGE]:
        path = Path(image)
        array = read_image(path)[0]
        checked = gate.check(array, str(path)) if gate is not None else None
        if checked is not None and checked.verdict == "refuse" and not keep_failing:
            console.print(json.dumps({"image": str(path), "quality": checked.to_dict(),
                                      "error": "refused by the quality gate: " + "; ".join(checked.reasons)},
                                     indent=1))
            continue
        if checked is not None:
            array = checked.corrected
        result = pipe.predict(array, str(path))
        files = result.save(out, path.stem, array if overlay else None)
        record = {**result.to_json(), "files": files}
        if checked is not None:
            record["quality"] = checked.to_dict()
        console.print(json.dumps(record, indent=1))


@severity_app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="severity run directory"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="rows to evaluate (default: the run's "
                                                                     "disease manifest, test split)"),
    scored: Optional[Path] = typer.Option(None, "--scored", help="manifest with reader scores (Brixia, Cohen)"),
    split: str = typer.Option("test", help="part of the run's split to evaluate when --manifest is not given"),
    n_boot: int = typer.Option(200, help="bootstrap resamples for CIs"),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
) -> None:
    """Disease Dice/IoU, FP area, per-lung involvement and grades, zone count, Brixia and Cohen agreement."""
    import pandas as pd

    from cxrlab.data import schema
    from cxrlab.data.manifest import load_manifest
    from cxrlab.severity.evaluation import evaluate_severity
    from cxrlab.severity.pipeline import SeverityPipeline
    from cxrlab.utils import atomic_write_json

    pipe = SeverityPipeline.from_run(run, backend=backend)
    if manifest is None:
        df = load_manifest(run / "disease_manifest.csv").df
        parts = pd.read_csv(run / "disease" / "split.csv", dtype=str)
        df = df[df[schema.IMAGE].map(dict(zip(parts[schema.IMAGE], parts["split"]))) == split]
    else:
        df = load_manifest(manifest).df
    scored_df = load_manifest(scored).df if scored is not None else None
    with progress() as bar:
        result = evaluate_severity(pipe, df, scored_df, n_boot=n_boot, progress=stage_callback(bar))
    atomic_write_json(run / "metrics.json", result)
    console.print(json.dumps({k: v for k, v in result.items() if k in ("disease", "normal_false_positive",
                                                                     "involvement", "failed_images")}, indent=1,
                             default=str))
    console.print(f"written: {run / 'metrics.json'}")


@severity_app.command("compare")
def compare_cmd(
    config: str = typer.Argument(..., help="recipe name (covid-scoring) or severity config YAML: the shared "
                                           "Stage I, data, split and Stage II budget"),
    out: Path = typer.Option(..., "--out", help="study directory: one severity run per decoder + comparison.md/png"),
    decoders: str = typer.Option(",".join(DECODERS), "--decoders", help="comma-separated smp decoders (default: the paper's nine)"),
    set_: list[str] = typer.Option([], "--set", help="override a key of the shared config, e.g. disease.epochs=5"),
    part: str = typer.Option("test", "--part", help="part of the Stage II split to evaluate on"),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
    speed_images: int = typer.Option(32, "--speed-images", help="held-out images timed per decoder"),
    n_boot: int = typer.Option(200, help="bootstrap resamples for CIs"),
    doc: Optional[Path] = typer.Option(None, "--doc", help="write the page here (plot beside it) instead of "
                                                           "OUT/comparison.md, e.g. docs/benchmarks/severity_decoders.md"),
) -> None:
    """The paper's decoder study: each Stage II decoder on the same Stage I, split and budget → Dice/IoU, zone-count
    MAE, grade macro-MAE, FP area on normals, images/s, parameters and MACs; a table and a scatter plot.
    Re-running the same command resumes (finished decoders are kept)."""
    from cxrlab.severity.compare import compare_decoders, write_comparison

    names = [d.strip() for d in decoders.split(",") if d.strip()]

    def show(decoder: str, r: dict) -> None:
        d = r.get("disease", {})
        zc = r.get("zone_count_mae_ci", {}).get("value", float("nan"))
        console.print(f"{decoder}: Dice {d.get('dice_mean', float('nan')):.3f}, zone-count MAE {zc:.2f}, "
                      f"{r.get('images_per_s', float('nan')):.1f} images/s")

    with progress() as bar:
        comparison = compare_decoders(config, out, names, overrides=list(set_), part=part, backend=backend,
                                      speed_images=speed_images, n_boot=n_boot, progress=stage_callback(bar),
                                      on_decoder=show)
    import shlex
    import sys

    command = "cxrlab " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["severity"] else None
    files = write_comparison(comparison, out, doc, command=command)
    console.print(f"written: {files['markdown']} and {files['plot']}")


def register(app: typer.Typer) -> None:
    app.add_typer(severity_app, name="severity")
