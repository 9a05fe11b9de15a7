"""Benchmark: wall time of ``make demo`` (``cxrlab.demo.run_demo``) per step, with the quality it reaches.

    .venv/bin/python bench/demo_time.py [--out runs/demo_bench] [--size 128] [--fast]

Runs the demo in-process into ``--out`` (git-ignored), then writes ``bench/results/demo_time.json`` and
``docs/benchmarks/demo.md`` with the machine (``lscpu`` model, cores), the date and the load average before and
after, since the 2-core CPU is shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

# as `cxrlab` itself does (cxrlab/cli/main.py): idle OpenMP threads sleep instead of spinning on the shared CPU;
# read once when torch loads, so set before any cxrlab import
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cxrlab.cli._common import console  # noqa: E402
from cxrlab.demo import run_demo  # noqa: E402
from cxrlab.machine import machine_info  # noqa: E402
from cxrlab.utils import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _quality(outputs: dict[str, Path]) -> dict[str, float | None]:
    lung = json.loads((outputs["lung_run"] / "metrics.json").read_text())
    diagnosis = json.loads((outputs["diagnosis_run"] / "metrics.json").read_text())
    severity = json.loads(outputs["severity_metrics"].read_text())
    total = severity.get("brixia", {}).get("total", {}).get("summary", {}).get("model-reader", {})
    return {
        "lungs_test_dice": lung.get("test", {}).get("overall", {}).get("lungs", {}).get("dice_mean"),
        "diagnosis_test_macro_f1": diagnosis.get("test", {}).get("macro_f1"),
        "diagnosis_test_accuracy": diagnosis.get("test", {}).get("accuracy"),
        "disease_test_dice_pooled": severity.get("disease", {}).get("dice_pooled"),
        "brixia_total_test_mae": total.get("mae"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_bench")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()
    start = time.perf_counter()
    outputs = run_demo(args.out, size=args.size, fast=args.fast, console=console)
    wall = time.perf_counter() - start
    record = json.loads(outputs["record"].read_text())
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": machine_info()["cpu"],
            "cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
            "wall_seconds": round(wall, 1), "seconds": record["seconds"], "plan": record["plan"],
            "quality": _quality(outputs), "fast": args.fast}
    atomic_write_json(ROOT / "bench" / "results" / "demo_time.json", info)
    order = ["data", "lung", "diagnosis", "severity", "evaluation", "service", "total"]  # pipeline order
    steps = "\n".join(f"| {k} | {record['seconds'][k]:.1f} |" for k in order)
    quality = "\n".join(f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |" for k, v in info["quality"].items())
    plan = ", ".join(f"{k}={v}" for k, v in record["plan"].items())
    atomic_write_text(ROOT / "docs" / "benchmarks" / "demo.md", f"""# `make demo` wall time

Command: `.venv/bin/python bench/demo_time.py{' --fast' if args.fast else ''}` (runs `cxrlab.demo.run_demo`, the
job of `make demo`, in-process; `make demo` adds the interpreter start-up and the set-up check).

Machine: {info['cpu']}, {info['cores']} cores, shared with other jobs; load average (1/5/15 min) before
{', '.join(f'{x:.1f}' for x in load_before)}, after {', '.join(f'{x:.1f}' for x in info['load_after'])}.
Date: {info['date']}. Plan: {plan}.

| step | seconds |
|---|---|
{steps}

Quality the demo reaches on its phantom test patients (one seed; small data, so only a sanity check):

| figure | value |
|---|---|
{quality}
""")
    console.print(f"wrote docs/benchmarks/demo.md (demo {wall:.0f} s wall)")


if __name__ == "__main__":
    main()
