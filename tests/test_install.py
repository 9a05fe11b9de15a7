"""Reproducible installs: the environment running the tests is consistent, and constraints.txt (what ``make``
installs with) agrees with pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned and not re.search(r"[<>=!~ ;@]", pinned), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = pinned
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_constraints_pin_every_requirement_within_its_range():
    pins = _pins()
    assert "cxrlab" not in pins  # the project itself is installed from the checkout, never pinned
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is required but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}"
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")


def test_typer_is_within_the_tested_range():
    (typer_req,) = [r for r in _requirements() if canonicalize_name(r.name) == "typer"]
    assert typer_req.specifier and any(s.operator == "<" for s in typer_req.specifier), \
        "typer needs an upper bound: a new minor release changed its error classes once"
    assert typer_req.specifier.contains(version("typer")), (version("typer"), str(typer_req))


def test_make_setup_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", makefile, re.M), "the stamp must depend on it"
    assert re.search(r"pip install .*-c constraints\.txt .*-e '\.\[test\]'", makefile), makefile
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("```")[1]
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
