"""``cxrlab evaluate RUN`` (metrics.json + report.html) and ``cxrlab explain RUN IMAGE... --out DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console, progress


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("explain")(explain)


def evaluate(
    run: Path = typer.Argument(..., help="Run directory (with predictions.parquet)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Manifest with extra columns (sex, age, view, "
                                        "lung masks for HCS) joined on the image path."),
    readers: Optional[Path] = typer.Option(None, "--readers", help="Reader table: 'image' and "
                                           "'<target column>@<reader>' columns (CSV/Parquet)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/evaluation)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Patient-level bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap and sampling seed."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", help="Heatmap overlays and HCS (needs the model)."),
    method: str = typer.Option("gradcam", "--method", help="CAM method for the gallery and HCS."),
    lung_model: Optional[Path] = typer.Option(None, "--lung-model", help="Lung segmentation run: masks for HCS "
                                              "when the manifest has none."),
    hcs: str = typer.Option("nonzero", "--hcs", help="HCS definition: nonzero (share of non-zero heatmap pixels "
                            "inside the lungs, the opacity paper's) or mass (heatmap mass >= --hcs-threshold)."),
    hcs_threshold: float = typer.Option(0.5, "--hcs-threshold", help="mass HCS: threshold relative to the "
                                        "heatmap's peak."),
) -> None:
    """Evaluate a run: metrics with patient-level CIs, subgroups, reader agreement, HCS, HTML report."""
    from cxrlab.evaluate.report import build_report

    with console.status(f"evaluating {run} ({n_boot} bootstrap resamples"
                        f"{', heatmaps' if gallery else ''})"):
        path = build_report(run, data=data, readers=readers, out=out, n_boot=n_boot, seed=seed, gallery=gallery,
                            cam_method=method, lung_model=lung_model, hcs_definition=hcs,
                            hcs_threshold=hcs_threshold)
    console.print(f"metrics: {path.parent / 'metrics.json'}")
    console.print(f"report:  {path}")


def explain(
    run: Path = typer.Argument(..., help="Run directory (with recipe.yaml and checkpoints/best.pt)."),
    images: list[Path] = typer.Argument(..., help="Image files, folders of images (searched recursively) or a "
                                        "manifest (its lung masks are used when --data is not given)."),
    out: Path = typer.Option(..., "--out", help="Folder for overlay PNGs and explain.json."),
    method: str = typer.Option("gradcam", "--method", help="CAM method (see --list-methods)."),
    head: Optional[str] = typer.Option(None, "--head", help="Model head to explain (default: the first)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Manifest listing the images, for lung masks (HCS, "
                                        "contour)."),
    hcs: str = typer.Option("nonzero", "--hcs", help="HCS definition: nonzero (share of non-zero heatmap pixels "
                            "inside the lungs, the opacity paper's) or mass (heatmap mass >= --threshold)."),
    threshold: float = typer.Option(0.5, "--threshold", help="mass HCS: threshold relative to the heatmap's peak."),
    lung_model: Optional[Path] = typer.Option(None, "--lung-model", help="Lung segmentation run: masks for "
                                              "images not in --data."),
) -> None:
    """Heatmap overlays (image, lung contour, probability-weighted CAM) and HCS for images."""
    from cxrlab.data import schema
    from cxrlab.data.inputs import resolve_inputs

    resolved = resolve_inputs(images)  # before the model libraries load: a wrong path fails at once

    from cxrlab.explain.cams import CAM_METHODS
    from cxrlab.explain.run import explain_images

    CAM_METHODS.get(method)  # unknown method: one-line error listing the known ones
    if data is None and resolved.source is not None:  # one manifest given: it also supplies the lung masks
        data = resolved.source
    with progress() as bar:
        folder = explain_images(run, list(resolved.df[schema.IMAGE]), out, method=method, head=head,
                                threshold=threshold, data=data, lung_model=lung_model, progress=bar,
                                hcs_definition=hcs)
    console.print(f"overlays and explain.json in {folder}")
