"""Import, validate and summarise every dataset folder of ../shared/data; time each step.

    .venv/bin/python bench/import_shared.py [--data ../shared/data] [--repeats 3] [--md docs/benchmarks/data_import.md]

For each folder holding a manifest.csv it runs
  1. the CLI exactly as a user would: `cxrlab data import cxrlab SRC --out OUT` (validation included),
     `cxrlab data validate OUT`, `cxrlab data stats OUT` (wall time, exit code must be 0);
  2. the library steps (median of --repeats): import_dataset, validate_manifest, reading images with
     cxrlab.io.read_image (first 200 images), apply_exclusions (reads every image).
Outputs (manifests) go under bench/results/shared/ (git-ignored, never committed); the figures go to
bench/results/import_shared.json and, with --md, to a markdown page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrlab.data.exclusions import apply_exclusions  # noqa: E402
from cxrlab.data.importers import import_dataset  # noqa: E402
from cxrlab.data.validate import errors, validate_manifest  # noqa: E402
from cxrlab.io import read_image  # noqa: E402


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_before": os.getloadavg()}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cli(*args: str) -> tuple[float, str]:
    exe = Path(sys.executable).with_name("cxrlab")
    start = time.perf_counter()
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`cxrlab {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def bench_folder(src: Path, out: Path, repeats: int) -> dict:
    cli_import, _ = cli("data", "import", "cxrlab", str(src), "--out", str(out))
    cli_validate, _ = cli("data", "validate", str(out))
    cli_stats, stats_text = cli("data", "stats", str(out))
    t_import, manifest = timed(lambda: import_dataset("cxrlab", src), repeats)
    t_validate, issues = timed(lambda: validate_manifest(manifest), repeats)
    sample = manifest.df["image"].head(200).tolist()
    t_read, _ = timed(lambda: [read_image(p) for p in sample], repeats)
    t_exclude, result = timed(lambda: apply_exclusions(manifest), 1)
    df = manifest.df
    return {
        "folder": src.name, "images": len(df), "patients": int(df["patient_id"].nunique()),
        "findings": df["finding"].value_counts(dropna=False).to_dict() if "finding" in df else {},
        "views": df["view"].value_counts().to_dict(),
        "masks": {c: int(df[c].notna().sum()) for c in df.columns if c.startswith("mask_")},
        "validation_errors": len(errors(issues)), "validation_warnings": len(issues) - len(errors(issues)),
        "notes": manifest.attrs.get("notes", []),
        "exclusions": {f"{c}/{a}": int(n) for (c, a), n in result.counts().items()},
        "kept_after_exclusions": len(result.kept),
        "cli_seconds": {"import+validate": round(cli_import, 2), "validate": round(cli_validate, 2),
                        "stats": round(cli_stats, 2)},
        "library_seconds": {"import": round(t_import, 3), "validate": round(t_validate, 3),
                            "exclusions": round(t_exclude, 2)},
        "read_image_ms": round(1000 * t_read / max(len(sample), 1), 2),
    }


def markdown(info: dict, rows: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`  ",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; {info['date']}; "
             f"load average before {info['load_before'][0]:.2f} / after {info['load_after'][0]:.2f} "
             "(CPU shared with other jobs).", "",
             "| folder | images | patients | errors | warnings | CLI import+validate s | CLI validate s | CLI stats s "
             "| import s | validate s | read_image ms/img | exclusions s | kept after exclusions |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, lib = r["cli_seconds"], r["library_seconds"]
        lines.append(f"| `{r['folder']}` | {r['images']} | {r['patients']} | {r['validation_errors']} | "
                     f"{r['validation_warnings']} | {c['import+validate']} | {c['validate']} | {c['stats']} | "
                     f"{lib['import']} | {lib['validate']} | {r['read_image_ms']} | {lib['exclusions']} | "
                     f"{r['kept_after_exclusions']} |")
    lines += ["", "| folder | finding counts | views | masks | exclusions (criterion/action: rows) |", "|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "-"  # noqa: E731
        lines.append(f"| `{r['folder']}` | {fmt(r['findings'])} | {fmt(r['views'])} | {fmt(r['masks'])} | "
                     f"{fmt(r['exclusions'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--md", type=Path, default=None, help="also write the markdown tables here")
    args = parser.parse_args()
    folders = sorted(p for p in args.data.iterdir() if (p / "manifest.csv").is_file())
    if not folders:
        raise SystemExit(f"no dataset folders with manifest.csv under {args.data}")
    info = machine()
    rows = []
    for src in folders:
        print(f"{src.name} ...", flush=True)
        rows.append(bench_folder(src, args.out / src.name, args.repeats))
        print(json.dumps(rows[-1], indent=1), flush=True)
    info["load_after"] = os.getloadavg()
    result = {"machine": info, "folders": rows}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "import_shared.json").write_text(json.dumps(result, indent=2))
    text = markdown(info, rows, "python bench/import_shared.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text("# Data import benchmark (shared data)\n\n" + text)


if __name__ == "__main__":
    main()
