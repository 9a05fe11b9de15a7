"""Reader agreement on the BrixIA readers of ieee8023: the human baseline for per-lung opacity grading.

Per-lung grade (0-3) = rounded mean of that lung's three BrixIA zones (A-C patient-right, D-F patient-left),
for the senior and the junior reader. The table (MAE, quadratic kappa, macro-F1, R^2 with patient-level
bootstrap 95 % CIs) is the disagreement a model should be compared with. With ``--predictions``, a model's
per-lung grades (columns ``image``, ``pred_opacity_right``, ``pred_opacity_left``; or the run directory's
``predictions.parquet``) are added as a third rater.

    .venv/bin/python bench/evaluation_brixia_readers.py [--data ../shared/data/ieee8023_covid_chestxray]
        [--predictions RUN/predictions.parquet] [--out bench/results/evaluation_brixia.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.manifest import load_manifest
from cxrlab.evaluate import agreement_table, ordinal_metrics
from cxrlab.utils import atomic_write_json

ZONES = {"opacity_right": "ABC", "opacity_left": "DEF"}
READERS = ("senior", "junior")


def per_lung_grades(df: pd.DataFrame, reader: str) -> pd.DataFrame:
    """Long table: one row per (image, lung) with the reader's rounded-mean grade."""
    out = []
    for lung, zones in ZONES.items():
        cols = [f"brixia_{reader}_{z}" for z in zones]
        # the mean of three integers is k/3, never x.5: rounding is unambiguous
        grade = np.round(df[cols].astype(float).mean(axis=1, skipna=False))
        out.append(pd.DataFrame({"image": df["image"], "patient_id": df["patient_id"], "lung": lung,
                                 reader: grade.to_numpy()}))
    return pd.concat(out, ignore_index=True)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True,
               text=True).stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return {"cpu": cpu, "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/ieee8023_covid_chestxray")
    ap.add_argument("--predictions", default=None)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/evaluation_brixia.json")
    args = ap.parse_args()

    df = load_manifest(args.data).df
    rated = df.dropna(subset=[f"brixia_{r}_{z}" for r in READERS for z in "ABCDEF"])
    long = per_lung_grades(rated, "senior").merge(per_lung_grades(rated, "junior"),
                                                  on=["image", "patient_id", "lung"])
    raters = {r: long[r].to_numpy() for r in READERS}
    model = None
    if args.predictions:
        pred = pd.read_parquet(args.predictions) if args.predictions.endswith(".parquet") else pd.read_csv(
            args.predictions)
        pred = pred.melt(id_vars=["image"], value_vars=[f"pred_{k}" for k in ZONES], var_name="lung",
                         value_name="model")
        pred["lung"] = pred["lung"].str.removeprefix("pred_")
        pred["image"] = pred["image"].map(lambda p: Path(p).name)
        long["key"] = long["image"].map(lambda p: Path(p).name)
        long = long.merge(pred.rename(columns={"image": "key"}), on=["key", "lung"], how="left")
        raters["model"] = long["model"].to_numpy()
        model = "model"
    table = agreement_table(raters, model=model, n_classes=4, patient_ids=long["patient_id"].to_numpy(),
                            n_boot=args.n_boot, seed=0)
    # the senior reader as reference: the junior reader's score on the opacity paper's metrics
    junior_vs_senior = ordinal_metrics(long["senior"].astype(int), long["junior"].astype(int), 4,
                                       patient_ids=long["patient_id"], n_boot=args.n_boot, seed=0)
    result = {"machine": machine(), "n_images": int(len(rated)), "n_patients": int(rated["patient_id"].nunique()),
              "n_lungs": int(len(long)), "grade_counts": {r: np.bincount(long[r].astype(int), minlength=4).tolist()
                                                          for r in READERS},
              "agreement": table, "junior_vs_senior": junior_vs_senior}
    atomic_write_json(args.out, result)

    def fmt(e: dict) -> str:
        return f"{e['value']:.3f} ({e['low']:.3f}-{e['high']:.3f})"

    print(f"{result['n_images']} images, {result['n_patients']} patients, {result['n_lungs']} lungs; "
          f"grade counts {result['grade_counts']}")
    print("| reference | other | kind | n lungs | MAE | quadratic kappa | macro-F1 | R^2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table["rows"]:
        print(f"| {r['reference']} | {r['other']} | {r['kind']} | {r['n']} | {fmt(r['mae'])} | "
              f"{fmt(r['kappa_quadratic'])} | {fmt(r['macro_f1'])} | {fmt(r['r2'])} |")
    m = junior_vs_senior["metrics"]
    print("\njunior scored against senior (opacity paper metrics):")
    for k in ("macro_mae", "kappa_quadratic", "weighted_f1", "none_vs_any.f1", "mild_vs_moderate.f1", "severe.f1"):
        print(f"  {k}: {fmt(m[k])}")
    print(json.dumps(result["machine"]))


if __name__ == "__main__":
    main()
