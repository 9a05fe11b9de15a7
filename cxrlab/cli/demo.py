"""``cxrlab demo``: the main job of ``make demo`` (a thin layer over :func:`cxrlab.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli._common import console


def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="output folder (re-running overwrites its steps)"),
    seed: int = typer.Option(0, help="seed of the phantom, the split and every model"),
    size: int = typer.Option(128, help="phantom image side in pixels (multiple of 32, >= 64)"),
    fast: bool = typer.Option(False, "--fast", help="tiny data, 1-3 epochs per model (under a minute; for tests)"),
) -> None:
    """Phantom → import, validate, split → lung model → diagnosis → severity → report → viewer config."""
    from cxrlab.demo import run_demo

    run_demo(out, seed=seed, size=size, fast=fast, console=console)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
