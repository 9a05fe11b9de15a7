"""Image-quality gate benchmark on the shared real data → ``docs/benchmarks/quality.md``.

    python bench/quality.py --data ../shared/data/ieee8023_covid_chestxray --data ../shared/data/jsrt_scr_lung_masks \
        --data ../shared/data/kermany_pediatric_pneumonia --data ../shared/data/covid_qu_ex_infection_seg

One command: reads every film, computes the frozen features once (as displayed and inverted; cached under
``bench/results/quality/``, git-ignored), runs 5-fold patient-level cross-validation of the gate
(:func:`cxrlab.quality.cross_validate`) so every film — the 54 ieee8023 laterals included — is judged by a
gate that never saw its patient, and writes the Markdown page with patient-level bootstrap 95 % CIs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from cxrlab.data import schema  # noqa: E402
from cxrlab.machine import load_average, machine_info  # noqa: E402
from cxrlab.quality import cross_validate, load_quality_config  # noqa: E402
from cxrlab.quality.features import FeatureExtractor  # noqa: E402
from cxrlab.quality.nonchest import nonchest_images  # noqa: E402
from cxrlab.quality.train import FeatureTable, compute_features, load_training_rows, view_labels  # noqa: E402
from cxrlab.utils import atomic_write_json, atomic_write_text, json_safe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def features(args: argparse.Namespace, config, cache: Path) -> tuple[FeatureTable, np.ndarray, dict]:
    df = load_training_rows(args.data, config)
    extractor = FeatureExtractor(config.backbone, config.weights, config.size, config.batch_size)
    t0 = time.perf_counter()
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        keep = df[schema.IMAGE].astype(str).isin(set(z["images"].tolist()))
        rows = df[keep].set_index(df[keep][schema.IMAGE].astype(str)).loc[z["images"]].reset_index(drop=True)
        table = FeatureTable(rows, z["features"], z["inverted"], view_labels(rows), [])
        other = z["other"]
        timing = json.loads(str(z["timing"]))
    else:
        def progress(stage: str, done: int, total: int, status: str) -> None:
            if done == total or done % 500 == 0:
                print(f"{stage}: {done}/{total} {status}", flush=True)

        table = compute_features(df, extractor, progress)
        seconds = time.perf_counter() - t0
        other = extractor([im for _, im in nonchest_images(seed=config.seed)])
        timing = {"feature_seconds": round(seconds, 1), "films": len(table.rows),
                  "films_per_s": round(2 * len(table.rows) / seconds, 1), "load_before": load_average(),
                  "unreadable": len(table.skipped)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, features=table.features, inverted=table.inverted, other=other,
                            images=table.rows[schema.IMAGE].astype(str).to_numpy(), timing=json.dumps(timing))
    return table, other, timing


def fmt(e: dict) -> str:
    if e.get("value") is None:
        return "–"
    if e.get("low") is None or e.get("n_boot", 0) == 0:
        return f"{e['value']:.3f}"
    return f"{e['value']:.3f} ({e['low']:.3f}–{e['high']:.3f})"


def report(res: dict, timing: dict, config, machine: dict, out: Path, command: str) -> None:
    v, inv, ood = res["view"], res["inversion"], res["ood"]
    lat = res["oof"]
    lines = [
        "# Image-quality gate on the shared data",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} (CPU); {machine['date']}; "
        f"load average before/after: {timing.get('load_before')} / {res['load_after']}.  ",
        f"Gate: frozen `{config.backbone}` ({config.weights}) pooled features at {config.size} px; logistic "
        f"regressions for view and polarity; Mahalanobis distance (Ledoit-Wolf, {config.ood_components} PCA "
        f"components) for out-of-distribution, refuse above {config.ood_refuse_margin} x the largest distance of "
        f"held-out chest films ({config.ood_refuse_quantile} quantile), warn above the {config.ood_warn_quantile} "
        f"quantile.",
        "",
        f"**Protocol.** {res['folds']}-fold cross-validation by patient (folds stratified by whether a patient has a "
        f"lateral film): every film is judged by a gate fitted without its patient; inside each training part, "
        f"{config.val_fraction:.0%} of the patients are held back to set the OOD thresholds. "
        f"{res['n_films']} films of {res['n_patients']} patients ({timing.get('unreadable', 0)} listed films "
        f"could not be read and are not counted). 95 % CIs: patient-level bootstrap (1000 resamples).",
        "",
        "## Targets (issue #16)",
        "",
        "| check | target | held-out result (95 % CI) | met |",
        "|---|---|---|---|",
        f"| view accuracy (frontal vs lateral), {res['n_view_films']} films with a known view | ≥ 0.98 | "
        f"{fmt(v['accuracy'])} | {'yes' if v['accuracy']['value'] >= 0.98 else 'no'} |",
        f"| inversion detection accuracy ({res['n_films']} films, each as displayed and inverted) | ≥ 0.99 | "
        f"{fmt(inv['accuracy'])} | {'yes' if inv['accuracy']['value'] >= 0.99 else 'no'} |",
        "",
        "Accuracy alone flatters the view check (laterals are 1 % of the films), so the per-class figures:",
        "",
        "| view check | value (95 % CI) |",
        "|---|---|",
        f"| lateral recall ({res['n_lateral']} real ieee8023 laterals refused) | {fmt(v['lateral_recall'])} |",
        f"| frontal specificity (frontal films let through) | {fmt(v['frontal_specificity'])} |",
        f"| balanced accuracy | {fmt(v['balanced_accuracy'])} |",
        "",
        "| inversion check | value (95 % CI) |",
        "|---|---|",
        f"| inverted films detected | {fmt(inv['inverted_recall'])} |",
        f"| correctly displayed films left alone | {fmt(inv['displayed_specificity'])} |",
        "",
        "## Not a chest radiograph",
        "",
        f"{ood['n_nonchest']} non-chest pictures: the scikit-image sample images (photographs, microscopy, "
        "astronomy, text, a retina, a CT-like phantom; each also flipped and cropped twice) and generated "
        "pictures (smooth noise, gradients, shapes, printed pages). They are never used to fit the gate.",
        "",
        "| out-of-distribution check | value |",
        "|---|---|",
        f"| AUROC chest films vs non-chest pictures | {ood['auroc_chest_vs_nonchest']:.4f} |",
        f"| non-chest pictures refused | {ood['nonchest_refused']:.3f} |",
        f"| non-chest pictures warned or refused | {ood['nonchest_warned_or_refused']:.3f} |",
        f"| held-out chest films refused as non-chest (95 % CI) | {fmt(ood['chest_refused'])} |",
        f"| held-out chest films warned or refused (95 % CI) | {fmt(ood['chest_warned_or_refused'])} |",
        "",
        "## Per source (out-of-fold)",
        "",
        "| source | films | view accuracy | inversion accuracy | refused as non-chest |",
        "|---|---|---|---|---|",
    ]
    for src, s in res["per_source"].items():
        va = "–" if s["view_accuracy"] is None else f"{s['view_accuracy']:.4f}"
        lines.append(f"| {src} | {s['images']} | {va} | {s['inversion_accuracy']:.4f} | {s['chest_refused']:.4f} |")
    missed = lat[(lat["lateral"] == 1) & (lat["view_prob"] <= config.view_threshold)]
    false_lat = lat[(lat["lateral"] == 0) & (lat["view_prob"] > config.view_threshold)]
    lines += [
        "",
        f"Laterals missed: {len(missed)}; frontal films called lateral: {len(false_lat)}"
        + (f" (largest lateral probability among them {false_lat['view_prob'].max():.2f})" if len(false_lat) else "")
        + ".",
        "",
        "## Speed",
        "",
        f"Features of {timing.get('films')} films, each as displayed and inverted: {timing.get('feature_seconds')} s "
        f"({timing.get('films_per_s')} forward passes/s incl. reading, batch {config.batch_size}); a check costs one "
        "forward pass, two when the film is inverted.",
        "",
        "## What these numbers cannot show",
        "",
        "- Only one source (ieee8023) has laterals, so part of what the view model learns may be that source; "
        "the per-source table shows frontal ieee8023 films are still called frontal, but a hospital's laterals "
        "were not available to test.",
        "- Inverted films are synthetic negatives of correctly displayed films. A real MONOCHROME1 film shown raw "
        "also differs in its window and burnt-in text; `cxrlab.io` already applies MONOCHROME1 when the DICOM "
        "header says so, so the gate is for exports that lost that header.",
        "- The non-chest set is small and far from chest films; other radiographs (abdomen, hand, skull) and CT "
        "slices, the realistic mistakes, are not in the shared data, so the refusal rate for *those* is unknown.",
        "- Views recorded as missing or '?' in ieee8023 are left out of the view figures.",
        "",
    ]
    atomic_write_text(out, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="manifest or dataset folder (repeatable)")
    parser.add_argument("--config", default=None, help="quality config YAML (default: the library's defaults)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/quality")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/benchmarks/quality.md")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    config = load_quality_config(args.config)
    machine = machine_info()
    table, other, timing = features(args, config, args.results / f"features_{config.backbone}_{config.size}.npz")
    res = cross_validate(table, config, other, k=args.folds)
    res["load_after"] = load_average()
    res["oof"].to_csv(args.results / "out_of_fold.csv", index=False)
    atomic_write_json(args.results / "results.json", json_safe({k: v for k, v in res.items() if k != "oof"}
                                                               | {"timing": timing, "machine": machine}))
    command = "python bench/quality.py " + " ".join(f"--data {d}" for d in args.data)
    report(res, timing, config, machine, args.doc, command)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
