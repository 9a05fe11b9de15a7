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
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Before torch loads: idle OpenMP threads sleep instead of spinning, which on 2 shared cores steals the time
# other processes (and our own second stage) need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cxrlab.data import schema  # noqa: E402
from cxrlab.data.importers import import_dataset  # noqa: E402
from cxrlab.data.manifest import load_manifest, save_manifest  # noqa: E402
from cxrlab.export import list_backends  # noqa: E402
from cxrlab.severity.pipeline import SeverityPipeline  # noqa: E402
from cxrlab.severity.train import train_severity  # noqa: E402
from cxrlab.utils import atomic_write_json, atomic_write_text  # noqa: E402

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
    """The benchmark's severity config with ``--set`` overrides applied."""
    from cxrlab.config import apply_overrides

    return apply_overrides(base_config(args), list(getattr(args, "set", []) or []))


def base_config(args: argparse.Namespace) -> dict:
    """Stage II sized for ~20-30 min on 2 shared cores: 128 px, U-Net/EfficientNet-Lite0 (ImageNet), epochs × 300."""
    return {
        "name": "covid-scoring-bench",
        "lung_run": str(args.lung_run),
        "manifests": [str(OUT / "data" / "covidquex.csv")],
        "disease": {"arch": "unet", "encoder": "efficientnet_lite0", "weights": "imagenet", "input": "image+lung",
                    "size": 128, "epochs": getattr(args, "epochs", 5), "samples_per_epoch": 300, "batch_size": 16,
                    "lr": 2e-3,
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
    atomic_write_json(OUT / "train_info.json", {"seconds": time.time() - t0, "machine": machine(),
                                                "command": "python bench/severity.py " + " ".join(sys.argv[1:])})


def fit(args: argparse.Namespace) -> None:
    train_severity(config(args), resume=True, fit=True, progress=_log)
    print((RUN / "scoring.json").read_text())


def evaluate(args: argparse.Namespace) -> None:
    from cxrlab.severity.evaluation import predict_rows, summarize_severity

    qu = load_manifest(OUT / "data" / "covidquex.csv").df
    split = pd.read_csv(RUN / "disease" / "split.csv", dtype=str)
    qu["split"] = qu[schema.IMAGE].map(dict(zip(split[schema.IMAGE], split["split"])))
    if args.backend != "auto":  # the same test images on another engine: accuracy by engine (report's table)
        pipe = SeverityPipeline.from_run(RUN, backend=args.backend)
        pred = predict_rows(pipe, qu[qu["split"] == "test"], progress=_log, stage=f"covidquex test, {args.backend}")
        pred.to_parquet(OUT / f"pred_covidquex_test_{args.backend}.parquet")
        engines = {k: getattr(st.model, "choice", {}).get("chosen", getattr(st.model, "engine", args.backend))
                   for k, st in zip(("lung", "disease"), pipe._stages)}
        atomic_write_json(OUT / f"engine_{args.backend}.json", {"backend": args.backend, "engines": engines,
                                                                "machine": machine()})
        print(f"wrote pred_covidquex_test_{args.backend}.parquet (engines {engines})")
        return
    pipe = SeverityPipeline.from_run(RUN)
    ieee = load_manifest(OUT / "data" / "ieee8023.csv").df
    bsplit = pd.read_csv(RUN / "brixia_split.csv", dtype=str)
    ieee["brixia_split"] = ieee[schema.IMAGE].map(dict(zip(bsplit[schema.IMAGE], bsplit["split"])))
    scored = ieee[ieee["brixia_senior_A"].notna() | ieee[schema.GEOGRAPHIC_EXTENT].notna()]
    seg_pred = predict_rows(pipe, qu[qu["split"] == "test"], progress=_log, stage="covidquex test")
    scored_pred = predict_rows(pipe, scored, progress=_log, stage="ieee8023 scored")
    seg_pred.to_parquet(OUT / "pred_covidquex_test.parquet")
    scored_pred.to_parquet(OUT / "pred_ieee8023_scored.parquet")
    result = {"scoring": pipe.scoring.model_dump(mode="json"), "backend": pipe.backend,
              **summarize_severity(seg_pred, scored_pred, scored), "machine": machine()}
    # Stage I (runs/lung_bench) trained on lung masks of some of these images: the same figures on the images
    # that are also in the lung run's test part show whether that flatters the result.
    lung_split = pd.read_csv(args.lung_run / "split.csv", dtype=str)
    lung_test = set(lung_split.loc[lung_split["split"] == "test", schema.IMAGE].map(lambda p: str(Path(p).resolve())))
    seg_sub = seg_pred[seg_pred[schema.IMAGE].map(lambda p: str(Path(p).resolve())).isin(lung_test)]
    scored_sub = scored_pred[scored_pred[schema.IMAGE].map(lambda p: str(Path(p).resolve())).isin(lung_test)]
    result["lung_held_out"] = summarize_severity(seg_sub, scored_sub, scored)
    result["lung_held_out"]["n_images"] = {"covidquex": int(len(seg_sub)), "ieee8023": int(len(scored_sub))}
    atomic_write_json(OUT / "evaluation.json", result)
    print(json.dumps(result, indent=1, default=str)[:3000])


def _previous_path(pipe: SeverityPipeline) -> SeverityPipeline:
    """The pipeline as it ran before its inference engines: the runs' own segmenters (NCHW, autocast by
    precision), for a comparison under the same load."""
    prev = copy.copy(pipe)
    prev._stages = (pipe.lung, pipe.disease)
    return prev


def speed(args: argparse.Namespace) -> None:
    """Images/s, the median of ``--repeats`` timings; with ``--compare-previous`` the previous path is timed
    alternately with the new one, so both see the same (shared, fluctuating) load."""
    pipe = SeverityPipeline.from_run(RUN, backend=args.backend)
    qu = load_manifest(OUT / "data" / "covidquex.csv").df
    paths = qu[schema.IMAGE].sample(n=args.n, random_state=0).tolist()
    prev = _previous_path(pipe) if args.compare_previous else None
    for p in (pipe, prev):
        if p is not None:
            p.throughput(paths[:8])  # warm-up (lazy init, allocator)
    before = machine()
    new_runs, prev_runs = [], []
    for _ in range(args.repeats):
        new_runs.append(pipe.throughput(paths, batch_size=args.batch_size)["images_per_s"])
        if prev is not None:
            prev_runs.append(prev.throughput(paths, batch_size=args.batch_size)["images_per_s"])
    res = {"images": len(paths), "images_per_s": statistics.median(new_runs), "images_per_s_runs": new_runs,
           "machine": machine(), "load_before": before["load"], "batch_size": args.batch_size,
           "lung_size": pipe.lung.config.size, "disease_size": pipe.disease.config.size, "backend": pipe.backend,
           "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    if prev is not None:
        res.update(previous_images_per_s=statistics.median(prev_runs), previous_images_per_s_runs=prev_runs,
                   previous_precision=pipe.disease.precision)
    atomic_write_json(OUT / f"speed_{pipe.backend}_b{args.batch_size}.json", res)
    print(res)


def val_checks(_: argparse.Namespace) -> None:
    """Two questions about what limits Stage II, asked on the validation films with disease (never the test part):
    how much reference disease lies outside Stage I's predicted lungs (the pipeline discards it), and whether
    averaging with the mirrored film (test-time flip) raises the per-image Dice. Written to ``val_checks.json``."""
    import numpy as np

    from cxrlab.anatomy.metrics import dice
    from cxrlab.io import read_image
    from cxrlab.severity.pipeline import _truth_disease

    pipe = SeverityPipeline.from_run(RUN)
    lung_stage, disease_stage = pipe._stages
    table = load_manifest(RUN / "disease_manifest.csv").df
    split = pd.read_csv(RUN / "disease" / "split.csv", dtype=str)
    table["split"] = table[schema.IMAGE].map(dict(zip(split[schema.IMAGE], split["split"])))
    rows = table[(table["split"] == "val") & table[schema.MASK_DISEASE].map(lambda v: isinstance(v, str) and v != "")]
    cut = disease_stage.config.threshold
    outside, plain, flipped = [], [], []
    for start in range(0, len(rows), 8):
        chunk = rows.iloc[start:start + 8]
        images = [read_image(r[schema.IMAGE])[0] for _, r in chunk.iterrows()]
        lungs = [m[schema.KEY_LUNG_MASK] for m in lung_stage.predict_batch(images, lungs_only=True)]
        probs = disease_stage.probabilities(images, lungs, channels=[schema.MASK_DISEASE])
        mirrored = disease_stage.probabilities([im[:, ::-1].copy() for im in images],
                                               [lm[:, ::-1].copy() for lm in lungs], channels=[schema.MASK_DISEASE])
        for (_, row), image, lung, p, q in zip(chunk.iterrows(), images, lungs, probs, mirrored):
            truth = _truth_disease(row, image.shape).astype(bool)
            if not truth.any():
                continue
            inside = lung.astype(bool)
            outside.append(float((truth & ~inside).sum() / truth.sum()))
            plain.append(dice((p[0] >= cut) & inside, truth))
            flipped.append(dice(((p[0] + q[0][:, ::-1]) / 2 >= cut) & inside, truth))
        _log("val checks", min(start + 8, len(rows)), len(rows), "validation films")
    result = {"images": len(plain), "cut": cut, "disease_outside_predicted_lungs_mean": float(np.mean(outside)),
              "dice_per_image": float(np.mean(plain)), "dice_per_image_flip_averaged": float(np.mean(flipped)),
              "machine": machine()}
    atomic_write_json(OUT / "val_checks.json", result)
    print(json.dumps(result, indent=1))


def _val_checks_line() -> list[str]:
    path = OUT / "val_checks.json"
    if not path.exists():
        return []
    v = json.loads(path.read_text())
    gain = v["dice_per_image_flip_averaged"] - v["dice_per_image"]
    return [f"- What limits Stage II, asked on the {v['images']} validation films with disease (step `val_checks`): "
            f"{100 * v['disease_outside_predicted_lungs_mean']:.1f} % of the reference disease lies outside Stage I's "
            f"predicted lungs on average (discarded by the pipeline); averaging with the mirrored film gives a "
            f"per-image Dice of {v['dice_per_image_flip_averaged']:.4f} against {v['dice_per_image']:.4f} without "
            f"(cut {v['cut']:.2f}); "
            + ("the pipeline does not flip: it gains less than 0.005." if gain < 0.005 else
               f"a gain of {gain:.3f} the pipeline does not take yet.")]


def cohen_cv(_: argparse.Namespace) -> None:
    """Cohen scores from the predicted involvement by a linear map fitted in 5 patient-level folds (the published
    reference also regresses); each image is predicted by the map fitted on the other patients only."""
    from sklearn.linear_model import LinearRegression

    from cxrlab.data.splits import kfold_patients
    from cxrlab.evaluate import regression_metrics

    pred = pd.read_parquet(OUT / "pred_ieee8023_scored.parquet")
    truth = load_manifest(OUT / "data" / "ieee8023.csv").df
    out = {}
    for score in (schema.GEOGRAPHIC_EXTENT, schema.OPACITY_SCORE):
        df = pred.merge(truth[[schema.IMAGE, score]], on=schema.IMAGE)
        df = df.dropna(subset=[score, "pred_involvement_right", "pred_involvement_left"]).reset_index(drop=True)
        folds = kfold_patients(df, k=5, seed=0).to_numpy()
        x = df[["pred_involvement_right", "pred_involvement_left"]].to_numpy(float)
        y = df[score].to_numpy(float)
        fitted = pd.Series(index=df.index, dtype=float)
        for f in range(5):
            model = LinearRegression().fit(x[folds != f], y[folds != f])
            fitted[folds == f] = model.predict(x[folds == f])
        m = regression_metrics(y, fitted.to_numpy(), patient_ids=df[schema.PATIENT_ID].to_numpy(), n_boot=200)
        out[score] = {"n": m["n"], "mae": m["metrics"]["mae"], "r2": m["metrics"]["r2"],
                      "pearson": m["metrics"]["pearson"]}
    atomic_write_json(OUT / "cohen_cv.json", out)
    print(out)


def _ci(m: dict, digits: int = 3) -> str:
    return f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def _agreement_rows(table: dict) -> list[str]:
    lines = []
    for r in table["rows"]:
        pair = f"{r['other']} vs {r['reference']}" if r["kind"] == "model-reader" else f"{r['reference']}–{r['other']}"
        lines.append(f"| {pair} | {r['n']} | {_ci(r['mae'], 2)} | {_ci(r['kappa_quadratic'], 2)} | {_ci(r['r2'], 2)} |")
    return lines


PUBLISHED = {"dice": 0.8821, "iou": 0.8305}  # COVID-QU-Ex infection segmentation (Tahir et al. 2021), per image
TARGETS = {"dice_mean": 0.80, "zone_count_mae": 0.5}  # issue #14


def _lung_output(run: Path) -> str:
    spec = run / "severity.json"
    return json.loads(spec.read_text()).get("lung_output", "shared") if spec.exists() else "shared"


def _lung_test_note(lung_run: Path) -> str:
    """Stage I's own held-out lung Dice (its metrics.json), so the page says which lung model it used."""
    path = lung_run / "metrics.json"
    if not path.exists():
        return ""
    m = json.loads(path.read_text())
    own = {k.split(" ")[0]: v["lungs"]["dice_mean"] for k, v in m.get("test", {}).get("by_source", {}).items()}
    return (f" Its test-part mean lung Dice, each source in its own convention: "
            + ", ".join(f"{k} {v:.4f}" for k, v in own.items())
            + f" ({m.get('epochs_run')} epochs run, best val {m.get('best_val_dice', float('nan')):.4f}; "
            "anatomy.md describes the same recipe's earlier run).")


def _init_from_note(disease_cfg: dict) -> str:
    """A fine-tuned Stage II: each run it started from (following ``init_from`` back to the first), that run's
    budget, where it stopped and the command that trained it."""
    notes, start, lr = [], disease_cfg.get("init_from"), disease_cfg.get("lr")
    while start:
        start = Path(start)
        earlier = yaml_load(start / "recipe.yaml")
        hist = pd.read_csv(start / "history.csv")
        best = hist.loc[hist["val_dice"].idxmax()]
        draws = len(hist) * int(earlier.get("samples_per_epoch") or 0)
        info = start.parents[1] / "train_info.json"
        notes.append(f"fine-tuned (lr {lr}, cosine) from `{start}`: lr {earlier.get('lr')}, {len(hist)} of "
                     f"{earlier.get('epochs')} planned epochs × {earlier.get('samples_per_epoch')} draws = {draws} "
                     f"draws, patience {earlier.get('patience')} (best epoch {int(best['epoch'])}, val Dice "
                     f"{best['val_dice']:.3f} on {earlier.get('val_max_images')} val images at most), same patient "
                     "split (its `split.csv` is identical)"
                     + (f", trained by `{json.loads(info.read_text()).get('command')}`" if info.exists() else ""))
        start, lr = earlier.get("init_from"), earlier.get("lr")
    return "".join(f" {n[0].upper()}{n[1:]}." if i == 0 else f" That run was {n}." for i, n in enumerate(notes))


def _chain(disease_cfg: dict, hist: pd.DataFrame) -> list[tuple[float, int]]:
    """(training-epoch minutes, draws) of this Stage II run and of each run it was fine-tuned from, last first."""
    out = [(hist["epoch_seconds"].sum() / 60, len(hist) * int(disease_cfg.get("samples_per_epoch") or 0))]
    start = disease_cfg.get("init_from")
    while start:
        earlier, h = yaml_load(Path(start) / "recipe.yaml"), pd.read_csv(Path(start) / "history.csv")
        out.append((h["epoch_seconds"].sum() / 60, len(h) * int(earlier.get("samples_per_epoch") or 0)))
        start = earlier.get("init_from")
    return out


def _chain_minutes_note(disease_cfg: dict, hist: pd.DataFrame) -> str:
    """For a fine-tuned Stage II: the training-epoch minutes of the whole chain of runs, each run's share."""
    minutes = [m for m, _ in _chain(disease_cfg, hist)]
    if len(minutes) == 1:
        return ""
    parts = " + ".join(f"{m:.0f}" for m in reversed(minutes))
    return f"; with the runs it was fine-tuned from, {sum(minutes):.0f} min of training epochs ({parts}, first run first)"


def _threshold_line(disease_run: Path) -> str:
    """The Stage II mask cut the figures use, and what it was chosen on."""
    from cxrlab.anatomy.threshold import THRESHOLD_FILE

    path = disease_run / THRESHOLD_FILE
    if not path.exists():
        return "- Stage II mask threshold: the recipe's 0.5 (the run records no fitted threshold)."
    t = json.loads(path.read_text())
    on = t.get("fitted_on", {})
    return (f"- Stage II mask threshold: **{t['threshold']:.2f}**, fitted on the validation part ({on.get('images')} "
            f"images: {on.get('groups')}) by the mean over disease / clear films of the per-image Dice inside the "
            f"predicted lungs: {t['score']:.4f} against {t['score_at_recipe_threshold']:.4f} at the recipe's "
            f"{t['recipe_threshold']:.2f} (`disease/threshold.json`, written by the `fit` step).")


def _senior_zone_mae(ev: dict) -> str:
    """Model vs senior reader, Brixia zone level, from an evaluation.json (``–`` when absent)."""
    rows = ev.get("brixia", {}).get("zone", {}).get("rows", [])
    row = next((r for r in rows if r.get("other") == "model" and r.get("reference") == "senior"), None)
    return "–" if row is None else f"{row['mae']['value']:.2f} [{row['mae']['low']:.2f}, {row['mae']['high']:.2f}]"


def _variant_lines(main: Path, others: list[Path]) -> list[str]:
    """Stage II variants on the same split and Stage I: the choice (validation Dice) and their test figures."""
    if not others:
        return []
    from cxrlab.anatomy.architectures import create_segmentation_model
    from cxrlab.machine import count_flops

    from cxrlab.anatomy.threshold import THRESHOLD_FILE

    rows = []
    for out in [main, *others]:
        seg_cfg = yaml_load(out / "run" / "disease" / "recipe.yaml")
        metrics = json.loads((out / "run" / "disease" / "metrics.json").read_text())
        # the choice: the pipeline's val score at the run's fitted cut (the whole val part, the same images for
        # every run); runs without a fitted cut fall back to the trainer's val Dice (its val subset may differ)
        fitted = out / "run" / "disease" / THRESHOLD_FILE
        choice = (f"{json.loads(fitted.read_text())['score']:.4f}" if fitted.exists()
                  else f"{metrics['best_val_dice']:.4f} (trainer)")
        ev = json.loads((out / "evaluation.json").read_text())
        net = create_segmentation_model(seg_cfg["arch"], seg_cfg["encoder"], "none", 2 if seg_cfg.get("input") ==
                                        "image+lung" else 1, 1, **(seg_cfg.get("arch_kwargs") or {}))
        size = int(seg_cfg["size"])
        gflop = count_flops(net.eval(), torch.rand(1, 2 if seg_cfg.get("input") == "image+lung" else 1, size, size)) / 1e9
        dec = (seg_cfg.get("arch_kwargs") or {}).get("decoder_channels", "smp default [256, 128, 64, 32, 16]")
        d, inv = ev.get("disease", {}), ev.get("involvement", {})
        zone = inv.get("zone_count_mae")
        zone = zone.get("value") if isinstance(zone, dict) else zone
        rows.append(f"| `{out.name}` | {seg_cfg['arch']} decoder {dec} | {gflop:.2f} | {metrics['epochs_run']} | "
                    f"{choice} | {d.get('dice_mean', float('nan')):.3f} | "
                    f"{d.get('dice_pooled', float('nan')):.3f} | {zone:.2f} | {_senior_zone_mae(ev)} |")
    return ["", "## Stage II variants (same split, same Stage I)",
            "The benchmark model is the variant with the best **validation** score: the mean over disease / clear "
            "films of the per-image Dice inside the predicted lungs at the run's fitted cut, on the whole validation "
            "part (`disease/threshold.json`); a cheaper variant would replace it only within 0.005. Test columns are "
            "shown, never used to choose. Zone-count MAE: all test images, normals included. The last column is "
            "another hospital's films (ieee8023 test patients, Brixia zone 0–3 MAE against the senior reader): a "
            "variant chosen on COVID-QU-Ex validation films need not transfer.", "",
            "| run | Stage II | GFLOP / image (256 px) | epochs run | val score (choice) | test Dice per image | "
            "test Dice pooled | zone-count MAE | ieee8023 Brixia zone MAE vs senior |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "",
            *[f"- `{out.name}`: `{json.loads((out / 'train_info.json').read_text()).get('command', '?')}`"
              for out in [main, *others] if (out / "train_info.json").exists()]]


def report(args: argparse.Namespace) -> None:
    from cxrlab.severity.evaluation import segmentation_cis

    ev = json.loads((OUT / "evaluation.json").read_text())
    tr = json.loads((OUT / "train_info.json").read_text())
    speeds = [sp for sp in (json.loads(p.read_text()) for p in sorted(OUT.glob("speed_*.json"))) if "backend" in sp]
    cv = json.loads((OUT / "cohen_cv.json").read_text()) if (OUT / "cohen_cv.json").exists() else {}
    cfg = yaml_load(RUN / "recipe.yaml")
    disease_cfg = yaml_load(RUN / "disease" / "recipe.yaml")
    lung_cfg = yaml_load(Path(cfg["lung_run"]) / "recipe.yaml")
    hist = pd.read_csv(RUN / "disease" / "history.csv")
    pred = pd.read_parquet(OUT / "pred_covidquex_test.parquet")
    cis = segmentation_cis(pred, n_boot=1000)
    sc = ev["scoring"]
    d, fp, inv = ev.get("disease", {}), ev.get("normal_false_positive", {}), ev.get("involvement", {})
    draws = len(hist) * int(disease_cfg.get("samples_per_epoch") or 0)
    best = hist.loc[hist["val_dice"].idxmax()] if "val_dice" in hist else None
    cmd = tr.get("command", "python bench/severity.py train")
    nan = float("nan")

    def ci(m: dict, digits: int = 3, scale: float = 1.0) -> str:
        if not m:
            return "–"
        return f"{scale * m['value']:.{digits}f} [{scale * m['low']:.{digits}f}, {scale * m['high']:.{digits}f}]"

    def verdict(value: float, target: float, lower_is_better: bool = False) -> str:
        ok = value <= target if lower_is_better else value >= target
        return "**met**" if ok else "**not met**"

    out_flag = f" --out {OUT.relative_to(ROOT)}" if OUT != ROOT / "runs" / "severity_bench" else ""
    lines = [
        "# Severity benchmark (two-stage: lungs → disease → scores)",
        "",
        f"All figures come from `bench/severity.py`; outputs under `{OUT.relative_to(ROOT)}/` (git-ignored). Re-run:",
        f"`{cmd}`, then `for s in fit evaluate speed cohen_cv val_checks report; do .venv/bin/python bench/severity.py $s{out_flag}; "
        "done` (`prepare` first on a fresh checkout; `speed --backend B` once per engine"
        + ("; the variants table: `report" + out_flag + " --also " + " ".join(str(Path(p)) for p in args.also) + "`"
           if getattr(args, "also", None) else "") + "). The train step's flags go to `fit` too (the run's own "
        "config is checked).",
        "",
        "## Machine and load",
        f"- training: {tr['machine']['cpu']}, {tr['machine']['cores']} cores, shared with other jobs of the session "
        f"(helpers' benchmarks, tests), finished {tr['machine']['date_utc']} UTC; at the end `{tr['machine']['load']}`; "
        f"{hist['epoch_seconds'].sum() / 60:.0f} min of training epochs ({tr['seconds'] / 60:.0f} min wall)"
        + _chain_minutes_note(disease_cfg, hist) + ".",
        f"- evaluation: {ev['machine']['date_utc']} UTC, `{ev['machine']['load']}`.",
        "",
        "## Setup",
        f"- Stage I: lung run `{cfg['lung_run']}` ({lung_cfg.get('arch')} / {lung_cfg.get('encoder')}, "
        f"{lung_cfg.get('size')} px, {lung_cfg.get('epochs')} epochs planned; trained on JSRT/SCR, ieee8023 V7 and "
        "COVID-QU-Ex lung masks by `python bench/segmentation.py train`), lung output "
        f"`{_lung_output(RUN)}` (recorded in the run's `severity.json`; the lung run's default output, chosen on "
        "held-out sources: [lung_default_output.md](lung_default_output.md))." + _lung_test_note(Path(cfg["lung_run"])),
        f"- Stage II: `{disease_cfg['arch']}` / `{disease_cfg['encoder']}` ({disease_cfg.get('weights')} weights), "
        f"input `{disease_cfg.get('input')}`, {disease_cfg['size']} px, {len(hist)} epochs × "
        f"{disease_cfg.get('samples_per_epoch')} balanced draws (images with / without disease equally) = {draws} "
        f"draws, loss `{disease_cfg.get('loss', {}) or 'bce_dice'}`, early stopping patience "
        f"{disease_cfg.get('patience')} on the validation Dice"
        + (f" (best epoch {int(best['epoch'])}, val Dice {best['val_dice']:.3f})" if best is not None else "") + "."
        + _init_from_note(disease_cfg),
        "- Data: COVID-QU-Ex infection subset (`covid_qu_ex_infection_seg`): COVID-19 images with QaTa-COV19 masks and",
        "  normal images as disease-free negatives; non-COVID pneumonia left out (never annotated). Patient-level split",
        "  70/15/15 (pseudo-patients, stratified by disease/clear), seed 0. All figures below are on the **test** part.",
        _threshold_line(RUN / "disease"),
        f"- Scoring: zones `{sc['zone_strategy']}`; zone threshold {sc['zone_threshold']:.3f} fitted on the validation",
        f"  part; Brixia cut-points {', '.join(f'{c:.3f}' for c in sc['brixia_cutpoints'])} fitted on the senior",
        "  reader's scores of the **training** patients (70 %) of the BrixIA-scored ieee8023 images.",
        "",
        "## Disease segmentation (COVID-QU-Ex test part)",
        "Per image: mean over COVID-19 test images of each image's Dice / IoU; pooled: all pixels of those images",
        "together. Brackets: patient-level bootstrap 95 % CI (1000 resamples).",
        "",
        "| | n | Dice per image | IoU per image | Dice pooled | IoU pooled |",
        "|---|---|---|---|---|---|",
        f"| cxrlab (this run) | {d.get('n', 0)} | {ci(cis.get('dice_mean', {}))} | {ci(cis.get('iou_mean', {}))} | "
        f"{ci(cis.get('dice_pooled', {}))} | {ci(cis.get('iou_pooled', {}))} |",
        f"| published, COVID-QU-Ex (Tahir et al. 2021; full data, GPU) | – | {PUBLISHED['dice']:.3f} | "
        f"{PUBLISHED['iou']:.3f} | – | – |",
        "",
        f"Target (#14): Dice per image ≥ {TARGETS['dice_mean']:.2f} — "
        + verdict(cis.get('dice_mean', {}).get('value', nan), TARGETS['dice_mean']) + ".",
        "",
        f"Normal test images (n = {fp.get('n', 0)}): false-positive disease area "
        f"{ci(cis.get('fp_area_mean', {}), 2, 100)} % of the image on average (median "
        f"{100 * fp.get('fp_area_median', nan):.2f} %); {ci(cis.get('fp_any', {}), 1, 100)} % of them have any "
        "predicted disease pixel after the lung restriction.",
        "",
        "## Zone-count score and per-lung involvement (reference = ground-truth masks)",
        "Zone-count (0–6) MAE against the count from the ground-truth masks, 0 for a normal film (the "
        "severity-scoring paper's protocol; its test set was 59 COVID-19 and 80 normal films): all "
        f"n = {cis.get('zone_count_mae', {}).get('n', 0)} test images "
        f"{ci(cis.get('zone_count_mae', {}), 3)} — target ≤ {TARGETS['zone_count_mae']}: "
        + verdict(cis.get('zone_count_mae', {}).get('value', nan), TARGETS['zone_count_mae'], True)
        + f"; the COVID-19 images alone (n = {cis.get('zone_count_mae_disease', {}).get('n', 0)}): "
        f"{ci(cis.get('zone_count_mae_disease', {}), 3)}. The share of normal films moves the first figure (ours "
        "are fewer than the paper's). Published best pair (DeepLabV3+ / MA-Net on its own data): MAE 0.30.",
        "",
        "| metric (COVID-19 test images, both lungs pooled) | value [95 % patient-bootstrap CI] |",
        "|---|---|",
    ]
    if inv:
        lines += [
            f"| involved-fraction MAE (n = {inv['n_lungs']} lungs) | {_ci(inv['fraction_mae'])} |",
            f"| involved-fraction R² | {_ci(inv['fraction_r2'])} |",
            f"| 0–3 grade macro-MAE | {_ci(inv['grade_macro_mae'])} |",
            f"| 0–3 grade quadratic kappa | {_ci(inv['grade_kappa_quadratic'])} |",
            "",
            f"Grade support (GT 0/1/2/3): {inv['grade_support']}; confusion (rows GT, columns predicted): "
            f"{inv['grade_confusion']}.",
        ]
    b = ev.get("brixia", {})
    if b:
        lines += [
            "",
            f"## Brixia-style scores vs the two BrixIA readers (ieee8023, {b['n_images']} test images of "
            f"{b['n_patients']} held-out patients)",
            "Zone level (0–3, six zones per image):",
            "",
            "| pair | n | MAE | quadratic kappa | R² |",
            "|---|---|---|---|---|",
            *_agreement_rows(b["zone"]),
            "",
            "Total (0–18):",
            "",
            "| pair | n | MAE | quadratic kappa | R² |",
            "|---|---|---|---|---|",
            *_agreement_rows(b["total"]),
        ]
    c = ev.get("cohen", {})
    if c:
        lines += ["", "## Cohen scores (ieee8023 images with the 3-rater means)",
                  "Rule-based rows: the score functions, nothing fitted. CV rows: step `cohen_cv`.",
                  "| score | n | MAE | R² | Pearson r |", "|---|---|---|---|---|"]
        for k, v in c.items():
            lines.append(f"| {k} | {v['n']} | {_ci(v['mae'], 2)} | {_ci(v['r2'], 2)} | {_ci(v['pearson'], 2)} |")
        for k, v in cv.items():
            lines.append(f"| {k}, linear map of the two involved fractions, 5-fold patient CV | {v['n']} | "
                         f"{_ci(v['mae'], 2)} | {_ci(v['r2'], 2)} | {_ci(v['pearson'], 2)} |")
        lines += ["", "Published reference (X-ray-pretrained DenseNet features + regression): MAE 1.14 (extent),",
                  "0.78 (opacity). Our `opacity_score` is the sum of the two per-lung involvement grades, an *extent*",
                  "proxy: a binary mask carries no density."]
    if speeds:
        lines += ["", "## Speed (read → Stage I → Stage II → scores, no overlay)",
                  "`bench/severity.py speed --backend B --batch-size N --n 192`: both stages batched at their training "
                  f"size ({speeds[0]['lung_size']} / {speeds[0]['disease_size']} px), median of the timings in "
                  f"`{OUT.relative_to(ROOT)}/speed_*.json`; the load changes second by second.", "",
                  "| engine | images/s (median) | images | batch | lung / disease input | date (UTC) | load before → after |",
                  "|---|---|---|---|---|---|---|"]
        for sp in speeds:
            load = sp["machine"]["load"].split("load average:")[-1].strip()
            before = sp.get("load_before", "").split("load average:")[-1].strip()
            lines.append(f"| {sp['backend']} | {sp['images_per_s']:.2f} | {sp['images']} | {sp['batch_size']} | "
                         f"{sp['lung_size']} / {sp['disease_size']} px | {sp['machine']['date_utc']} | "
                         f"{before} → {load} |")
    by_engine = sorted(OUT.glob("engine_*.json"))
    if by_engine:
        lines += ["", "## Accuracy by inference engine (same test images)",
                  "`bench/severity.py evaluate --backend B`: the figures above come from the default engine "
                  f"(`{ev.get('backend') or 'auto'}`: torch-bf16 on CPUs with native bf16, else torch-fp32); the "
                  "same COVID-QU-Ex test images on other engines. int8 graphs: `cxrlab export RUN --int8` "
                  "(calibrated on training images). Brackets: patient bootstrap 95 % CI.", "",
                  "| backend | engines (lungs / disease) | Dice per image | Dice pooled | zone-count MAE | date (UTC) |",
                  "|---|---|---|---|---|---|"]
        for path in by_engine:
            info = json.loads(path.read_text())
            pred_e = pd.read_parquet(OUT / f"pred_covidquex_test_{info['backend']}.parquet")
            c = segmentation_cis(pred_e, n_boot=1000)
            lines.append(f"| {info['backend']} | {info['engines']['lung']} / {info['engines']['disease']} | "
                         f"{ci(c.get('dice_mean', {}))} | {ci(c.get('dice_pooled', {}))} | "
                         f"{ci(c.get('zone_count_mae', {}))} | {info['machine']['date_utc']} |")
    sub = ev.get("lung_held_out", {})
    if sub:
        sd, si = sub.get("disease", {}), sub.get("involvement", {})
        sb = sub.get("brixia", {}).get("total", {}).get("rows", [])
        lines += ["", "## Stage I leakage check",
                  f"Stage I (`{cfg['lung_run']}`) was trained on lung masks of COVID-QU-Ex and ieee8023 images, some of "
                  "which are evaluated above. On the images that are also in the lung run's *test* part "
                  f"({sub['n_images']['covidquex']} COVID-QU-Ex, {sub['n_images']['ieee8023']} ieee8023):"]
        if sd:
            lines.append(f"- disease mean Dice {sd['dice_mean']:.3f}, IoU {sd['iou_mean']:.3f} (n = {sd['n']})")
        if si:
            lines.append(f"- involvement MAE {si['fraction_mae']['value']:.3f}, grade macro-MAE "
                         f"{si['grade_macro_mae']['value']:.3f}, kappa {si['grade_kappa_quadratic']['value']:.3f}")
        for r in sb:
            lines.append(f"- Brixia total MAE {r['other']} vs {r['reference']}: {r['mae']['value']:.2f} (n = {r['n']})")
    lines += ["", "## Reading the numbers",
              f"- Stage II saw {sum(d for _, d in _chain(disease_cfg, hist))} training draws at {disease_cfg['size']} px "
              "(with the runs it was fine-tuned from) on a shared 2-core CPU; the published",
              "  model trained on the full COVID-QU-Ex (more images than this subset) on a GPU.",
              "- The QaTa-COV19 disease masks are semi-automatic and coarse: a per-image Dice is bounded by how",
              "  consistently they outline opacities, and small lesions weigh as much as large ones in the per-image mean.",
              "- The zone threshold and Brixia cut-points are fitted (validation / training patients), not tuned on test.",
              *_val_checks_line(),
              "- Previous benchmark pages (in git history): 2026-12-06 01:55 (`runs/sev_ft`, the run this one was "
              "fine-tuned from, cut 0.10): Dice 0.732 per image / 0.826 pooled, zone-count MAE 0.75 (COVID-19 images "
              "only; 0.556 with the normals); 2026-12-05 22:23 (`runs/severity256`: default U-Net decoder,",
              "  24 × 600 draws, cut 0.5): Dice 0.718 per image / 0.810 pooled, zone-count MAE 0.79; its slim-decoder",
              "  variant (17 epochs × 600 draws): 0.758 / 0.828, MAE 0.70; 2026-12-05 11:03, the same Stage II with",
              "  Stage I's shared lung channels: Dice 0.704 per image / 0.793 pooled, zone-count MAE 0.79; 2026-11-22",
              "  (128 px, 3 × 300 draws): Dice 0.61 / IoU 0.48 per image on the same split recipe.",
              ]
    lines += _variant_lines(OUT, [Path(p) for p in getattr(args, "also", []) or []])
    lines += ["", f"Failed images (no lung found / unreadable): {ev.get('failed_images', 0)} of the segmentation rows, "
              f"{ev.get('scored_failed_images', 0)} of the reader-scored rows.", ""]
    doc = Path(getattr(args, "doc", None) or DOC)
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(doc, "\n".join(lines))
    print(doc)


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def main() -> None:
    global OUT, RUN
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["prepare", "train", "fit", "evaluate", "speed", "cohen_cv", "val_checks",
                                     "report"])
    p.add_argument("--lung-run", type=Path, default=ROOT / "runs" / "lung_bench")
    p.add_argument("--epochs", type=int, default=5, help="train/fit: Stage II epochs (may be lowered on resume)")
    p.add_argument("--n", type=int, default=96, help="speed: images timed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="auto", choices=["auto", *list_backends()],
                   help="speed: inference engine of both stages (auto: torch-bf16 on CPUs with native bf16)")
    p.add_argument("--repeats", type=int, default=5, help="speed: timings per engine; the median is reported")
    p.add_argument("--compare-previous", action="store_true",
                   help="speed: also time the previous path (the runs' own NCHW segmenters) under the same load")
    p.add_argument("--out", type=Path, default=OUT, help="benchmark folder (data/, run/, results; git-ignored)")
    p.add_argument("--doc", type=Path, default=DOC, help="report: the Markdown page to write")
    p.add_argument("--also", nargs="*", default=[], help="report: other benchmark folders (Stage II variants on "
                   "the same split) listed with their validation and test figures")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="train/fit: override a key of the severity config, e.g. disease.size=256 (repeatable)")
    args = p.parse_args()
    OUT, RUN = args.out.resolve(), args.out.resolve() / "run"
    steps = {"prepare": prepare, "train": train, "fit": fit, "evaluate": evaluate, "speed": speed, "cohen_cv": cohen_cv,
             "val_checks": val_checks, "report": report}
    steps[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
