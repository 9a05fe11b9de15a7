"""``cxrlab pretrain CONFIG --data M ... --out RUN``: a thin layer over :func:`cxrlab.pretrain.pretrain`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrlab.cli._common import console


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain_cmd)


def pretrain_cmd(config: str = typer.Argument(..., help="pretraining config: a YAML file or a shipped name "
                                                        "(lite0-xray)"),
                 data: list[Path] = typer.Option(..., "--data", help="manifest (repeat for several sources)"),
                 out: Path = typer.Option(..., "--out", help="run directory"),
                 resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
                 exclude_patients_of: Optional[list[Path]] = typer.Option(
                     None, "--exclude-patients-of", help="leave out every patient of this manifest (repeatable)"),
                 exclude_sources: Optional[list[str]] = typer.Option(
                     None, "--exclude-sources", help="leave out sources whose source_dataset matches "
                                                     "(glob or substring, case-insensitive; repeatable)"),
                 set_: Optional[list[str]] = typer.Option(None, "--set", help="config override key=value")) -> None:
    """Pretrain a backbone on chest X-rays (supervised multi-source heads and/or lightly SimCLR); the run is a
    weight source: ``weights: run:RUN``."""
    from cxrlab.pretrain import load_pretrain_config, pretrain

    cfg = load_pretrain_config(config, set_ or [])

    def log(msg: str) -> None:
        console.print(msg, highlight=False, markup=False)

    run = pretrain(cfg, data, out, resume=resume, exclude_patients_of=exclude_patients_of or [],
                   exclude_sources=exclude_sources or [], log=log)
    console.print(f"pretrained backbone: {run}  (use weights: run:{run})", highlight=False, markup=False)
