"""``cxrlab study run|report|list``: a thin layer over :mod:`cxrlab.study`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console

study_app = typer.Typer(help="Studies: a grid of recipes × folds × sides on Ray Tune, with selection and report.",
                        no_args_is_help=True)


@study_app.command("run")
def run_cmd(
    study: str = typer.Argument(..., help="a shipped study name (aloe-opacity), a study YAML path, or an ensemble "
                                "recipe (flannel-patch-quick, flannel-patch, or its YAML path)"),
    data: list[Path] = typer.Option(..., "--data", help="manifest, in the order of the study's data roles "
                                    "(aloe-opacity: COVID-QU-Ex, then ieee8023); repeatable"),
    lung_model: Optional[Path] = typer.Option(None, "--lung-model", help="lung segmentation run for images "
                                              "without lung masks (and the HCS lungs)"),
    out: Path = typer.Option(..., "--out", help="study directory (rerun the same command to resume)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local Ray)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="a budget preset of the study file (quick, paper)"),
    trials_at_once: Optional[int] = typer.Option(None, "--trials-at-once", min=1,
                                                 help="local Ray: trials run side by side (default: one per CPU "
                                                 "core); fewer when the machine runs short of memory"),
) -> None:
    """Run or resume a study: every stage of its protocol, each trial one Ray Tune trial; writes DIR/best/.
    An ensemble recipe (flannel-patch-quick, flannel-patch) runs each learner × fold as a trial, on shared folds."""
    from cxrlab.train.ensemble import is_ensemble_recipe

    def log(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    if is_ensemble_recipe(study):
        from cxrlab.study.ensemble import run_ensemble_study

        run_ensemble_study(study, data, out, lung_model=lung_model, address=address, preset=preset,
                           num_cpus=trials_at_once, log=log)
    else:
        from cxrlab.study import run_study

        run_study(study, data, out, lung_model=lung_model, address=address, preset=preset, num_cpus=trials_at_once,
                  log=log)
    console.print(f"study: {out} (report: {out / 'report.html'})")


@study_app.command("report")
def report_cmd(out: Path = typer.Argument(..., help="a study directory written by `cxrlab study run`")) -> None:
    """(Re)write DIR/report.md and DIR/report.html from what the study directory holds."""
    from cxrlab.study.ensemble import is_ensemble_study, write_ensemble_report
    from cxrlab.study.report import write_report

    write = write_ensemble_report if is_ensemble_study(out) else write_report
    write(out, log=lambda line: console.print(line, highlight=False, markup=False))


@study_app.command("list")
def list_cmd() -> None:
    """The shipped studies."""
    from cxrlab.study.spec import list_studies

    for name, text in list_studies().items():
        console.print(f"{name}: {text}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
