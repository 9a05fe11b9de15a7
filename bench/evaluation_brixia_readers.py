"""Reader agreement on the BrixIA readers of ieee8023: the human baseline for per-lung opacity grading.

Per-lung grade (0-3) = rounded mean of that lung's three BrixIA zones (A-C patient-right, D-F patient-left),
for the senior and the junior reader. The table (MAE, quadratic kappa, macro-F1, R^2 with patient-level
bootstrap 95 % CIs) is the disagreement a model should be compared with.

With ``--runs RUN...`` (per-lung opacity runs, e.g. the 5 folds of the learning benchmark's ``aloe-opacity``
runs), the runs' probabilities averaged over folds give the model's grade per lung (on the images that have
the V7 lung masks the ROI needs), added as a third rater; and the Heatmap Concordance Score of the first run's
probability-weighted Grad-CAM is computed per lung against the V7 lung mask, macro-averaged over the senior
reader's grades.

    .venv/bin/python bench/evaluation_brixia_readers.py [--data ../shared/data/ieee8023_covid_chestxray]
        [--runs runs/bench-learning/runs/opacity/imagenet/fold{0..4}] [--out bench/results/evaluation_brixia.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import time

import numpy as np
import pandas as pd

from cxrlab.data.manifest import load_manifest
from cxrlab.evaluate import agreement_table, ordinal_metrics
from cxrlab.utils import atomic_write_json

ZONES = {"opacity_right": "ABC", "opacity_left": "DEF"}
READERS = ("senior", "junior")
V7 = {"mask_v7_lungs": "mask_lungs", "mask_v7_right_lung": "mask_right_lung", "mask_v7_left_lung": "mask_left_lung"}


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


def model_grades(runs: list[str], df: pd.DataFrame) -> pd.DataFrame:
    """Per (image, lung): the grade of the fold-averaged probabilities of the runs."""
    from cxrlab.train import load_run

    probs = {lung: [] for lung in ZONES}
    for run in runs:
        pred = load_run(run).predict(df)
        for lung in ZONES:
            probs[lung].append(pred[[f"prob_{lung}_{g}" for g in range(4)]].to_numpy())
    return pd.concat([pd.DataFrame({"image": df["image"], "lung": lung,
                                    "model": np.mean(probs[lung], axis=0).argmax(axis=1).astype(float)})
                      for lung in ZONES], ignore_index=True)


def model_hcs(run: str, df: pd.DataFrame, long: pd.DataFrame, method: str, definition: str) -> dict:
    """HCS per lung input of ``run`` (per-side ROI: one input per lung, right then left), macro over the
    senior reader's grades."""
    from cxrlab.explain import macro_hcs
    from cxrlab.explain.run import explain_rows, load_explain_model

    em = load_explain_model(run)
    head = next(iter(em.heads()))
    res = explain_rows(em, df.to_dict("records"), head, method, with_overlay=False, hcs_definition=definition)
    per_lung = pd.DataFrame([{"image": r["image"], "lung": lung, "hcs": h}
                             for r in res for lung, h in zip(ZONES, r["hcs_per_input"])])
    per_lung = per_lung.merge(long[["image", "lung", "senior"]], on=["image", "lung"])
    summary = macro_hcs(per_lung["hcs"], per_lung["senior"].astype(int))
    return {"method": method, "definition": definition, "threshold": 0.5, "run": run, "head": head,
            "n_images": len(df),
            "n_lungs": int(per_lung["hcs"].notna().sum()), "chance": float(np.nanmean([r["lung_fraction"] for r in res])),
            **summary}


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True,
               text=True).stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return {"cpu": cpu, "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/ieee8023_covid_chestxray")
    ap.add_argument("--runs", nargs="*", default=[], help="per-lung opacity run directories (folds)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--hcs-method", default="gradcam")
    ap.add_argument("--hcs-definition", default="nonzero", help="nonzero (the paper's pixel share) or mass")
    ap.add_argument("--out", default="bench/results/evaluation_brixia.json")
    args = ap.parse_args()

    df = load_manifest(args.data).df
    rated = df.dropna(subset=[f"brixia_{r}_{z}" for r in READERS for z in "ABCDEF"]).reset_index(drop=True)
    long = per_lung_grades(rated, "senior").merge(per_lung_grades(rated, "junior"),
                                                  on=["image", "patient_id", "lung"])
    raters = {r: long[r].to_numpy() for r in READERS}
    model, hcs, timing = None, None, {}
    if args.runs:
        with_masks = rated.rename(columns=V7).dropna(subset=["mask_right_lung", "mask_left_lung"])
        # only the canonical lung masks travel with the images (the ROI needs them; other mask kinds would not)
        with_masks = with_masks.drop(columns=[c for c in with_masks.columns
                                              if c.startswith("mask_") and c not in V7.values()]).reset_index(drop=True)
        t0 = time.perf_counter()
        long = long.merge(model_grades(args.runs, with_masks), on=["image", "lung"], how="left")
        timing["predict_s"] = round(time.perf_counter() - t0, 1)
        raters["model"] = long["model"].to_numpy()
        model = "model"
        t0 = time.perf_counter()
        hcs = model_hcs(args.runs[0], with_masks, long, args.hcs_method, args.hcs_definition)
        timing["hcs_s"] = round(time.perf_counter() - t0, 1)
    table = agreement_table(raters, model=model, n_classes=4, patient_ids=long["patient_id"].to_numpy(),
                            n_boot=args.n_boot, seed=0)
    same_lungs = None
    if model is not None:  # reader-reader agreement on exactly the lungs the model graded, for a fair comparison
        graded = np.isfinite(raters["model"])
        same_lungs = agreement_table({k: v[graded] for k, v in raters.items()}, model=model, n_classes=4,
                                     patient_ids=long["patient_id"].to_numpy()[graded], n_boot=args.n_boot, seed=0)
    # the senior reader as reference: the junior reader's score on the opacity paper's metrics
    junior_vs_senior = ordinal_metrics(long["senior"].astype(int), long["junior"].astype(int), 4,
                                       patient_ids=long["patient_id"], n_boot=args.n_boot, seed=0)
    result = {"machine": machine(), "n_images": int(len(rated)), "n_patients": int(rated["patient_id"].nunique()),
              "n_lungs": int(len(long)), "grade_counts": {r: np.bincount(long[r].astype(int), minlength=4).tolist()
                                                          for r in READERS},
              "agreement": table, "junior_vs_senior": junior_vs_senior, "hcs": hcs, "runs": args.runs,
              "agreement_on_model_lungs": same_lungs,
              "timing": timing}
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
    if same_lungs is not None:
        print("\non the lungs the model graded:")
        for r in same_lungs["rows"]:
            print(f"| {r['reference']} | {r['other']} | {r['kind']} | {r['n']} | {fmt(r['mae'])} | "
                  f"{fmt(r['kappa_quadratic'])} | {fmt(r['macro_f1'])} | {fmt(r['r2'])} |")
    m = junior_vs_senior["metrics"]
    print("\njunior scored against senior (opacity paper metrics):")
    for k in ("macro_mae", "kappa_quadratic", "weighted_f1", "none_vs_any.f1", "mild_vs_moderate.f1", "severe.f1"):
        print(f"  {k}: {fmt(m[k])}")
    if hcs is not None:
        print(f"\nHCS ({hcs['method']}, threshold {hcs['threshold']}, {hcs['n_lungs']} lungs of {hcs['n_images']} "
              f"images): macro {hcs['macro']:.3f}; per senior grade {hcs['per_class']}; chance (lung share of "
              f"the ROI input) {hcs['chance']:.3f}")
    print(json.dumps({**result["machine"], **timing}))


if __name__ == "__main__":
    main()
