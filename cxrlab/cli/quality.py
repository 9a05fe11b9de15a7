"""``cxrlab quality train|check``: a thin layer over :mod:`cxrlab.quality`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console, progress, stage_callback

quality_app = typer.Typer(help="Image-quality gate: view (frontal/lateral), inverted grey levels, not a chest film.",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(quality_app, name="quality")


@quality_app.command("train")
def train(data: list[Path] = typer.Option(..., "--data", help="manifest(s) of radiographs (repeatable)"),
          out: Path = typer.Option(..., "--out", help="run directory"),
          config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML quality config"),
          set_: list[str] = typer.Option([], "--set", help="override a config key: key=value (repeatable)")) -> None:
    """Fit the gate on the manifests' films; prints the held-out view / inversion / OOD figures."""
    from cxrlab.quality import train_quality_gate

    with progress() as bar:
        run = train_quality_gate(data, out, config, set_, progress=stage_callback(bar))
    meta = json.loads((run / "quality.json").read_text())
    val = meta["validation"]
    console.print(f"run directory: [bold]{run}[/]  held-out view accuracy "
                  f"{val['view']['accuracy']['value']:.3f}, inversion accuracy "
                  f"{val['inversion']['accuracy']['value']:.3f}, non-chest refused "
                  f"{val['ood']['nonchest_refused']:.3f}")


@quality_app.command("check")
def check(run: Path = typer.Argument(..., help="quality run directory (cxrlab quality train)"),
          inputs: list[Path] = typer.Argument(..., help="image files, folders of images, or a manifest"),
          as_json: bool = typer.Option(False, "--json", help="one JSON object per image on stdout"),
          lateral: Optional[str] = typer.Option(None, "--lateral", help="refuse|warn (default: the run's)")) -> None:
    """Check images: view, view_prob, inverted, ood_score, verdict (ok|warn|refuse) and reasons."""
    from cxrlab.data import schema
    from cxrlab.data.inputs import resolve_inputs
    from cxrlab.errors import InputError
    from cxrlab.io import read_image
    from cxrlab.quality import QualityGate

    gate = QualityGate.load(run, lateral_policy=lateral)
    paths = [str(p) for p in resolve_inputs(inputs).df[schema.IMAGE]]
    for path in paths:
        try:
            result = gate.check(read_image(path)[0], name=path).to_dict()
        except InputError as exc:
            result = {"image": path, "view": None, "view_prob": None, "inverted": None, "ood_score": None,
                      "verdict": "refuse", "reasons": [f"unreadable: {exc.reason}"]}
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            colour = {"ok": "green", "warn": "yellow", "refuse": "red"}[result["verdict"]]
            console.print(f"[{colour}]{result['verdict']:>6}[/]  {path}  {'; '.join(result['reasons'])}",
                          highlight=False)
