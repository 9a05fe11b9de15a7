"""The ``cxrlab`` command: a thin Typer layer over the library API.

Each area owns one module in ``cxrlab.cli`` exposing ``register(app)``; adding an area is one new file and
one name in ``AREAS``. Errors raised on purpose (``CxrlabError``) are printed as one sentence, no traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

# OpenMP threads that spin while idle steal the other core from data loading and from other processes;
# passive waiting is much faster on a small, shared CPU. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer
from rich.console import Console

from cxrlab.errors import CxrlabError

app = typer.Typer(
    name="cxrlab",
    help="Chest X-ray AI toolkit: data, lung anatomy, training, evaluation, severity, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

AREAS = ["data", "segment", "learn", "evaluate", "severity", "quality", "serve", "demo"]

for _area in AREAS:
    try:
        _module = importlib.import_module(f"cxrlab.cli.{_area}")
    except ModuleNotFoundError as exc:  # an area not yet present in this checkout
        if exc.name != f"cxrlab.cli.{_area}":
            raise
        continue
    _module.register(app)


def main() -> None:
    try:
        app(standalone_mode=False)
    except CxrlabError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors come here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
