"""The ``cxrlab`` command: a thin Typer layer over the library API.

Each area owns one module in ``cxrlab.cli`` exposing ``register(app)``; adding an area is one new file and
one name in ``AREAS``. Errors raised on purpose (``CxrlabError``, also when raised in a worker process) are
printed as one sentence, exit 2; usage errors as click's usage line and one sentence, exit 2; anything else as
one ``internal error`` line naming the log file with the traceback, exit 1 (``CXRLAB_DEBUG=1`` shows it).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

# OpenMP threads that spin while idle steal the other core from data loading and from other processes;
# passive waiting is much faster on a small, shared CPU. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer
from rich.console import Console

app = typer.Typer(
    name="cxrlab",
    help="Chest X-ray AI toolkit: data, lung anatomy, training, evaluation, severity, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

AREAS = ["data", "segment", "learn", "evaluate", "severity", "quality", "retrieval", "sequence", "serve", "demo",
         "study", "pretrain"]

for _area in AREAS:
    try:
        _module = importlib.import_module(f"cxrlab.cli.{_area}")
    except ModuleNotFoundError as exc:  # an area not yet present in this checkout
        if exc.name != f"cxrlab.cli.{_area}":
            raise
        continue
    _module.register(app)


def _click_module() -> Any:
    """The click typer runs on: its vendored copy (``typer._click``, typer >= 0.26) or the click package."""
    import typer.core

    return getattr(typer.core, "_click", None) or importlib.import_module("click")


def _write_traceback(exc: BaseException) -> Path | None:
    """The full traceback of an unexpected error, in a log file under the temp folder; None if unwritable."""
    import tempfile
    import time
    import traceback

    try:
        folder = Path(tempfile.gettempdir()) / "cxrlab-errors"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(f"cxrlab {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message``; for an error torch wrapped in a worker, the original's last line."""
    text = str(exc).strip()
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        return text.splitlines()[-1]  # e.g. "ValueError: could not broadcast ..."
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _usage_error(exc: Any, click: Any) -> int:
    """Print a usage error as click does (usage line, help hint, one sentence); help alone exits 0."""
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)
    if no_args is not None and isinstance(exc, no_args):  # `cxrlab` or `cxrlab segment` alone: help, exit 0
        text = exc.ctx.get_help()  # typer prints rich help itself and returns ""; plain click returns the text
        if text:
            click.echo(text)
        return 0
    exc.show()
    return exc.exit_code


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``cxrlab`` console script: exit 0 ok, 1 failed, 2 bad usage or input, 130 interrupted."""
    click = _click_module()
    # typer >= 0.26 raises its own Exit/Abort; older typer re-exports click's (getattr: absent in the vendored copy)
    exits = tuple({typer.Exit, getattr(click.exceptions, "Exit", typer.Exit)})
    aborts = tuple({typer.Abort, getattr(click.exceptions, "Abort", typer.Abort)})
    try:
        code = app(args=args, standalone_mode=False)
    except click.exceptions.ClickException as exc:  # usage errors: unknown option/command, missing/bad value
        sys.exit(_usage_error(exc, click))
    except exits as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `cxrlab ... | head`: the reader went away; nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        sys.exit(1)
    except (*aborts, KeyboardInterrupt) as exc:
        cause = exc.__cause__ or exc.__context__
        if not isinstance(cause, EOFError):
            err_console.print("aborted")
            sys.exit(130)
        # click turns an EOFError raised anywhere in a command (a file that ends early) into Abort: report the
        # error itself, not an interruption by the user
        _report(cause)
    except Exception as exc:
        _report(exc)
    # in non-standalone mode `raise typer.Exit(n)` inside a command comes back as the return value n
    sys.exit(code if type(code) is int else 0)


def _report(exc: BaseException) -> None:
    """One line for an error: a cxrlab error (file, field, reason; exit 2), else an internal error whose
    traceback goes to a log file (exit 1). ``CXRLAB_DEBUG=1`` re-raises instead."""
    from rich.markup import escape

    from cxrlab.errors import InputError, find_cxrlab_error

    if os.environ.get("CXRLAB_DEBUG") == "1":
        raise exc
    original = find_cxrlab_error(exc)  # also one raised in a DataLoader worker, a thread or a pool
    if original is None and isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        # a path the user gave that the library did not check (no such folder, not a directory, no permission)
        original = InputError(exc.filename, exc.strerror[:1].lower() + exc.strerror[1:])
    if original is not None:
        err_console.print(f"[bold red]error:[/] {escape(str(original))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    log = _write_traceback(exc)
    err_console.print(f"[bold red]internal error:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
    err_console.print(f"full traceback in {log}" if log else "(set CXRLAB_DEBUG=1 to see the traceback)",
                      highlight=False, soft_wrap=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
