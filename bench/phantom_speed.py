"""Benchmark: phantom generation speed (the issue's goal: 400 images at 256 px in under a minute, 2 cores).

    .venv/bin/python bench/phantom_speed.py [--images 400] [--size 256] [--jobs 1 2]

Generates into a temporary folder, prints a Markdown table row per job count and writes
``bench/results/phantom_speed.json`` (machine, load, date included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from cxrlab.data.phantom import generate_phantom
from cxrlab.machine import machine_info
from cxrlab.utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # about 3.3 studies per patient with max_studies=6, so this gives a little more than --images
    n_patients = int(args.images / 3.0) + 1
    results = []
    print("| jobs | patients | images | size | seconds | images/s |\n|---|---|---|---|---|---|")
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            manifest = generate_phantom(Path(tmp), n_patients=n_patients, size=args.size, seed=args.seed, n_jobs=jobs)
            seconds = time.perf_counter() - start
            images = len(pd.read_csv(manifest))
        results.append({"jobs": jobs, "patients": n_patients, "images": images, "size": args.size,
                        "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1)})
        r = results[-1]
        print(f"| {jobs} | {n_patients} | {images} | {args.size} | {r['seconds']} | {r['images_per_s']} |")
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": machine_info()["cpu"],
            "cores": os.cpu_count(), "load": os.getloadavg(), "results": results}
    print(f"\n{info['date']} | {info['cpu']} | {info['cores']} cores | load {info['load']}")
    atomic_write_json(Path("bench/results/phantom_speed.json"), info)


if __name__ == "__main__":
    main()
