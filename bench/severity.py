"""Severity benchmark on the shared real data → ``docs/benchmarks/severity.md``.

Steps (each resumable; outputs under ``runs/severity_bench/``, git-ignored)::

    python bench/severity.py prepare    # canonical manifests of COVID-QU-Ex infection + ieee8023 (BrixIA, Cohen)
    python bench/severity.py train      # Stage II on COVID-QU-Ex (covid19 masks + normal as clear), no fit yet
    python bench/severity.py fit        # zone threshold (val split) + Brixia cut-points (ieee8023 train patients)
    python bench/severity.py evaluate   # disease Dice/IoU, FP area, per-lung involvement, Brixia, Cohen → JSON
    python bench/severity.py speed      # two-stage images/s (read, both stages, scores; no overlay)
    python bench/severity.py report     # write docs/benchmarks/severity.md from the JSON results

Stage I is the anatomy engineer's ``runs/lung_bench`` (override with ``--lung-run``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import import_dataset
from cxrlab.data.manifest import load_manifest, save_manifest
from cxrlab.severity.pipeline import SeverityPipeline
from cxrlab.severity.train import train_severity
from cxrlab.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXRLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "runs" / "severity_bench"
RUN = OUT / "run"
DOC = ROOT / "docs" / "benchmarks" / "severity.md"


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "load": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def prepare(_: argparse.Namespace) -> None:
    qu = import_dataset("cxrlab", DATA / "covid_qu_ex_infection_seg")
    save_manifest(qu, OUT / "data" / "covidquex.csv")
    ieee = import_dataset("cxrlab", DATA / "ieee8023_covid_chestxray")
    df = ieee.df[ieee.df[schema.VIEW] != "L"].reset_index(drop=True)  # frontal films only
    ieee.df = df
    save_manifest(ieee, OUT / "data" / "ieee8023.csv")
    print(f"covidquex {len(qu)} rows, ieee8023 frontal {len(df)} rows "
          f"(BrixIA {int(df['brixia_senior_A'].notna().sum())}, Cohen {int(df[schema.GEOGRAPHIC_EXTENT].notna().sum())})")


def config(args: argparse.Namespace) -> dict:
    """~20 min of Stage II training on 2 shared cores: 128 px, U-Net/EfficientNet-Lite0 (ImageNet), 5×300 draws."""
    return {
        "name": "covid-scoring-bench",
        "lung_run": str(args.lung_run),
        "manifests": [str(OUT / "data" / "covidquex.csv")],
        "disease": {"arch": "unet", "encoder": "efficientnet_lite0", "weights": "imagenet", "input": "image+lung",
                    "size": 128, "epochs": 5, "samples_per_epoch": 300, "batch_size": 16, "lr": 2e-3,
                    "val_max_images": 120, "evaluate_test": False, "threads": 2},
        "zone_strategy": "equal_area",
        "brixia": {"manifests": [str(OUT / "data" / "ieee8023.csv")], "columns_prefix": "brixia_senior_",
                   "test_fraction": 0.3, "seed": 0},
        "seed": 0,
        "out": str(RUN),
    }


def _log(stage: str, done: int, total: int, status: str) -> None:
    if done == total or done % 20 == 0:
        print(f"{time.strftime('%H:%M:%S')} {stage} {done}/{total} {status}", flush=True)


def train(args: argparse.Namespace) -> None:
    t0 = time.time()
    train_severity(config(args), resume=(RUN / "recipe.yaml").exists(), fit=False, progress=_log)
    atomic_write_json(OUT / "train_info.json", {"seconds": time.time() - t0, "machine": machine()})


def fit(args: argparse.Namespace) -> None:
    train_severity(config(args), resume=True, fit=True, progress=_log)
    print((RUN / "scoring.json").read_text())


def evaluate(args: argparse.Namespace) -> None:
    from cxrlab.severity.evaluation import evaluate_severity

    pipe = SeverityPipeline.from_run(RUN)
    qu = load_manifest(OUT / "data" / "covidquex.csv").df
    split = pd.read_csv(RUN / "disease" / "split.csv", dtype=str)
    qu["split"] = qu[schema.IMAGE].map(dict(zip(split[schema.IMAGE], split["split"])))
    ieee = load_manifest(OUT / "data" / "ieee8023.csv").df
    bsplit = pd.read_csv(RUN / "brixia_split.csv", dtype=str)
    ieee["brixia_split"] = ieee[schema.IMAGE].map(dict(zip(bsplit[schema.IMAGE], bsplit["split"])))
    scored = ieee[ieee["brixia_senior_A"].notna() | ieee[schema.GEOGRAPHIC_EXTENT].notna()]
    result = evaluate_severity(pipe, qu[qu["split"] == "test"], scored, progress=_log)
    result["machine"] = machine()
    atomic_write_json(OUT / "evaluation.json", result)
    print(json.dumps(result, indent=1)[:4000])


def speed(args: argparse.Namespace) -> None:
    pipe = SeverityPipeline.from_run(RUN)
    qu = load_manifest(OUT / "data" / "covidquex.csv").df
    paths = qu[schema.IMAGE].sample(n=args.n, random_state=0).tolist()
    pipe.throughput(paths[:8])  # warm-up (lazy init, allocator)
    res = pipe.throughput(paths, batch_size=args.batch_size)
    res.update(machine=machine(), batch_size=args.batch_size, lung_size=pipe.lung.config.size,
               disease_size=pipe.disease.config.size, precision=pipe.disease.precision)
    atomic_write_json(OUT / "speed.json", res)
    print(res)


def report(_: argparse.Namespace) -> None:
    from bench.severity_report import write_report

    write_report(OUT, DOC)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["prepare", "train", "fit", "evaluate", "speed", "report"])
    p.add_argument("--lung-run", type=Path, default=ROOT / "runs" / "lung_bench")
    p.add_argument("--n", type=int, default=96, help="speed: images timed")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    steps = {"prepare": prepare, "train": train, "fit": fit, "evaluate": evaluate, "speed": speed, "report": report}
    steps[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
