"""The ICU-admission study (issue #17): every arm on ONE patient-level 5-fold CV of the shared ieee8023 frontal
COVID-19 films after the event filter, and the table docs/benchmarks/icu.md.

    .venv/bin/python bench/icu.py --lung-model runs/lung_bench --xray-backbone runs/pretrain_icu
    .venv/bin/python bench/icu.py --report-only            # rewrite the page from the saved predictions

Work (imported manifest, fusion manifest, fold split files, fold runs, embeddings, predictions) goes under --work
(default bench/results/icu, git-ignored); every step is skipped when its output exists, so a killed run resumes.
The library does the work (cxrlab.icu: arms, folds, cv, table, fusion); this file only wires and writes the page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrlab.data.manifest import load_manifest  # noqa: E402
from cxrlab.icu.arms import ARMS, BASELINE, get_arm  # noqa: E402
from cxrlab.icu.cv import finetune_cv, head_cv  # noqa: E402
from cxrlab.icu.folds import make_folds, primary_rows, write_folds  # noqa: E402
from cxrlab.icu.fusion import DEFAULT_THRESHOLD, severity_fusion  # noqa: E402
from cxrlab.icu.table import arm_summary, paired_vs  # noqa: E402
from cxrlab.machine import load_average, machine_info  # noqa: E402
from cxrlab.recipes import load_recipe  # noqa: E402
from cxrlab.utils import atomic_write_json, atomic_write_text  # noqa: E402

TARGET = "went_icu"
FILTER = "data.filter={finding: [covid19], view: [PA, AP, AP Supine]}"


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


def prepare(args) -> tuple[Path, Path, list[Path], pd.DataFrame]:
    work = args.work
    manifest = work / "ieee8023" / "manifest.csv"
    if not manifest.is_file():
        subprocess.run([sys.executable, "-m", "cxrlab", "data", "import", "cxrlab", str(args.data),
                        "--out", str(manifest.parent)], check=True)
    fusion = work / "fusion_cohen.csv"
    if not fusion.is_file():
        atomic_write_text(fusion, severity_fusion(load_manifest(manifest).df,
                                                  threshold=args.fusion_threshold).to_csv(index=False))
    recipe = load_recipe("covid-icu", overrides=[FILTER])
    primary = primary_rows(recipe, [load_manifest(manifest)])
    split_files = sorted((work / "folds").glob("fold*.csv"))
    if len(split_files) != args.folds:
        split_files = write_folds(make_folds(primary, TARGET, args.folds, seed=0), work / "folds")
    return manifest, fusion, split_files, primary


def arm_timing(arm_dir: Path) -> dict:
    """When an arm's predictions were written (UTC) and the fold runs' summed training seconds (fine-tuned arms)."""
    pred = arm_dir / "predictions.parquet"
    seconds = 0.0
    for m in sorted(arm_dir.glob("fold*/metrics.json")):
        seconds += float(json.loads(m.read_text())["run"].get("train_seconds_this_call") or 0)
    return {"finished": dt.datetime.fromtimestamp(pred.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds"),
            "train_seconds": round(seconds)}


def xray_note(backbone: str | None) -> str:
    """What the X-ray backbone is, from a pretraining run's READY file (first line) when there is one."""
    if not backbone or not backbone.startswith("run:"):
        return ""
    ready = Path(backbone.removeprefix("run:")) / "READY"
    return ready.read_text().splitlines()[-1].strip() if ready.is_file() else ""


def fusion_counts(fusion: Path) -> dict:
    """Fused films that pass the study's filters (COVID-19, frontal, not taken in the ICU)."""
    f = load_manifest(fusion).df
    f = f[f["finding"].eq("covid19") & f["view"].isin(["PA", "AP", "AP Supine"]) & f["in_icu"].astype(str).ne("Y")]
    return {"images": int(len(f)), "patients": int(f["patient_id"].nunique()), "severe": int(f[TARGET].sum())}


def run_arm(arm, args, manifest: Path, fusion: Path, split_files: list[Path]) -> pd.DataFrame | None:
    out = args.work / "arms" / arm.name
    pred_file = out / "predictions.parquet"
    if pred_file.is_file():
        return pd.read_parquet(pred_file)
    weights = arm.weights(args.xray_backbone)
    if weights is None:
        log(f"{arm.name}: skipped (no --xray-backbone)")
        return None
    data = [manifest, fusion] if arm.fusion else [manifest]
    if arm.kind == "finetune":
        overrides = [FILTER, "train.num_workers=0", f"input.size={args.size}",
                     f"train.stages.0.epochs={args.epochs}", f"model.weights={weights}"]
        pred = finetune_cv("covid-icu", data, split_files, out, TARGET, overrides, args.lung_model, log)
    else:
        from cxrlab.retrieval.embeddings import embed, read_embeddings

        source = "efficientnet_lite0" if arm.backbone == "imagenet" else weights.removeprefix("run:")
        tag = "imagenet" if arm.backbone == "imagenet" else "xray"
        emb_dir = args.work / "embeddings"
        emb_dir.mkdir(parents=True, exist_ok=True)
        vec, meta = [], []
        for name, path in (("primary", manifest), ("fusion", fusion)):
            if name == "fusion" and not arm.fusion:
                continue
            rows = load_manifest(path).df
            rows = rows[rows["finding"].eq("covid19") & rows["view"].isin(["PA", "AP", "AP Supine"])
                        & rows[TARGET].notna() & rows["in_icu"].astype(str).ne("Y")]
            sub = emb_dir / f"{name}.csv"
            if not sub.is_file():
                atomic_write_text(sub, rows.to_csv(index=False))
            file = emb_dir / f"{tag}_{name}.parquet"
            embed(source, sub, file, lung_model=args.lung_model)
            e = read_embeddings(file)
            m = e.meta.reset_index(drop=True)
            m = m.drop(columns=[c for c in (TARGET, "train_only") if c in m.columns])
            m = m.merge(rows.assign(image=rows["image"].astype(str))[["image", TARGET]].assign(
                train_only=int(name == "fusion")), on="image", how="left")
            vec.append(e.vectors)
            meta.append(m)
        import numpy as np
        pred = head_cv(np.concatenate(vec), pd.concat(meta, ignore_index=True),
                       [pd.read_csv(f, dtype={"patient_id": str}) for f in split_files], TARGET)
    out.mkdir(parents=True, exist_ok=True)
    pred.to_parquet(pred_file)
    return pred


def write_page(args, results: dict, primary: pd.DataFrame) -> None:
    atomic_write_json(args.work / "results.json", results)
    # the page itself is written by cxrlab.icu.report (kept out of this thin caller)
    from cxrlab.icu.report import render

    atomic_write_text(args.page, render(results))
    log(f"wrote {args.page}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ieee8023_covid_chestxray")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "icu")
    p.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks" / "icu.md")
    p.add_argument("--lung-model", default=None, help="lung run for films without masks (runs/lung_bench)")
    p.add_argument("--xray-backbone", default=None, help="X-ray-pretrained backbone, e.g. run:runs/pretrain_icu")
    p.add_argument("--arms", default=",".join(a.name for a in ARMS))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--fusion-threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-gallery", action="store_true", help="skip Grad-CAM galleries and HCS")
    p.add_argument("--missing-reason", default="", help="a sentence for the page on why arms are missing")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = load_average()
    manifest, fusion, split_files, primary = prepare(args)
    views = primary.set_index(primary["image"].astype(str))["view"]
    preds = {}
    for name in args.arms.split(","):
        arm = get_arm(name)
        pred = (pd.read_parquet(args.work / "arms" / name / "predictions.parquet")
                if args.report_only and (args.work / "arms" / name / "predictions.parquet").is_file()
                else None if args.report_only else run_arm(arm, args, manifest, fusion, split_files))
        if pred is not None:
            preds[name] = pred
            log(f"{name}: done")
    rows = {}
    for name, pred in preds.items():
        rows[name] = {"label": get_arm(name).label, **arm_summary(pred, views, args.n_boot)}
        if name != BASELINE and BASELINE in preds:
            rows[name]["vs_baseline"] = paired_vs(preds[BASELINE], pred, args.n_boot)
    galleries = {}
    if not args.no_gallery:
        from cxrlab.icu.gallery import explain_arm, gallery_png

        tested = primary.assign(image=primary["image"].astype(str)).sort_values("image")
        sample = []  # HCS sample (CPU budget): 2 ICU + 2 non-ICU test films per fold, the same for every arm
        for f in split_files:
            s = pd.read_csv(f, dtype={"patient_id": str})
            t = tested[tested["image"].isin(s.loc[s["split"] == "test", "image"].astype(str))]
            sample += t[t[TARGET] == 1]["image"].head(2).tolist() + t[t[TARGET] == 0]["image"].head(2).tolist()
        chosen = tested[tested["image"].isin(sample)]
        films = (chosen[chosen[TARGET] == 1]["image"].head(3).tolist()
                 + chosen[chosen[TARGET] == 0]["image"].head(3).tolist())
        captions = {f: f"{'ICU' if t == 1 else 'no ICU'}, {v}" for f, t, v in
                    zip(tested["image"], tested[TARGET], tested["view"])}
        for name in preds:
            if get_arm(name).kind != "finetune":
                continue
            exp = explain_arm(args.work / "arms" / name, split_files, manifest, args.work / "explain" / name, sample)
            rows[name]["hcs"] = float(exp["hcs"].mean())
            rows[name]["hcs_films"] = int(exp["hcs"].notna().sum())
            png = gallery_png({name: exp}, films, {name: get_arm(name).label},
                              args.work / "galleries" / f"{name}.png", captions)
            galleries[name] = "../../" + str(png.relative_to(ROOT))
            log(f"{name}: gallery and HCS")
    report = primary.attrs.get("data_filter", {})
    results = {"arms": rows, "galleries": galleries, "missing_reason": args.missing_reason, "missing_arms": [a.name for a in ARMS if a.name not in preds],
               "labels": {a.name: a.label for a in ARMS},
               "data": {"images": int(len(primary)), "patients": int(primary["patient_id"].nunique()),
                        "icu_images": int(primary[TARGET].sum()),
                        "icu_patients": int(primary.loc[primary[TARGET] == 1, "patient_id"].nunique()),
                        "views": primary["view"].value_counts().to_dict(),
                        "removed_by_event_filter": report.get("rows_removed"),
                        "fusion": fusion_counts(fusion),
                        "fusion_threshold": args.fusion_threshold},
               "xray_note": xray_note(args.xray_backbone),
               "protocol": {"folds": args.folds, "size": args.size, "epochs": args.epochs,
                            "xray_backbone": args.xray_backbone, "lung_model": args.lung_model,
                            "n_boot": args.n_boot},
               "machine": machine_info(), "load_before": load_before, "load_after": load_average(),
               "started": started.isoformat(timespec="seconds"),
               "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": "python bench/icu.py " + shlex.join(a for a in (argv if argv is not None else sys.argv[1:])
                                                              if a != "--report-only"),
               "training": {name: arm_timing(args.work / "arms" / name) for name in preds}}
    write_page(args, results, primary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
