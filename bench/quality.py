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
                            images=np.asarray(table.rows[schema.IMAGE].astype(str).tolist(), dtype=str),
                            timing=json.dumps(timing))
    return table, other, timing


def service_refusals(res: dict, table: FeatureTable, config) -> dict:
    """Every real lateral uploaded, as PNG bytes, to the service pipeline holding its fold's gate (a gate that
    never saw the patient): how many come back refused (422) with a reason naming the lateral view."""
    from cxrlab.errors import InputError
    from cxrlab.io import read_image
    from cxrlab.quality import QualityGate
    from cxrlab.serve.pipeline import AnalysisPipeline
    from cxrlab.serve.samples import encode_png

    extractor = FeatureExtractor(config.backbone, config.weights, config.size, config.batch_size)
    rows = np.flatnonzero(table.lateral == 1)
    refused = named = 0
    for i in rows:
        gate = QualityGate(config, res["fold_models"][res["fold_of_row"][i]], extractor, lateral_policy="refuse")
        pipeline = AnalysisPipeline([], backend="torch-fp32", gate=gate)
        try:
            pipeline.analyze(encode_png(read_image(table.rows[schema.IMAGE].iloc[i])[0]), heatmap=False)
        except InputError as exc:
            refused += 1
            named += "lateral view" in exc.reason
    return {"laterals": int(len(rows)), "refused": refused, "reason_names_lateral": named}


def ood_comparison(table: FeatureTable, other: np.ndarray, config, folds: int) -> list[dict]:
    """The same cross-validation with each OOD method (only the distance part differs)."""
    rows = []
    for method in ("knn", "mahalanobis"):
        res = cross_validate(table, config.model_copy(update={"ood_method": method}), other, k=folds)
        o = res["ood"]
        rows.append({"method": method, "auroc": o["auroc_chest_vs_nonchest"], "refused": o["nonchest_refused"],
                     "warned_or_refused": o["nonchest_warned_or_refused"],
                     "chest_refused": o["chest_refused"], "chest_warned": o["chest_warned_or_refused"]})
    return rows


def fmt(e: dict) -> str:
    if e.get("value") is None:
        return "–"
    if e.get("low") is None or e.get("n_boot", 0) == 0:
        return f"{e['value']:.3f}"
    return f"{e['value']:.3f} ({e['low']:.3f}–{e['high']:.3f})"


def report(res: dict, timing: dict, config, machine: dict, out: Path, command: str, service: dict,
           ood_rows: list[dict]) -> None:
    v, inv, ood = res["view"], res["inversion"], res["ood"]
    ood_method = ("cosine distance to the 5th nearest training film (kNN)" if config.ood_method == "knn" else
                  f"Mahalanobis distance (Ledoit-Wolf, up to {config.ood_components} PCA components)")
    lat = res["oof"]
    lines = [
        "# Image-quality gate on the shared data",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} (CPU); {machine['date']}; "
        f"load average before/after: {timing.get('load_before')} / {res['load_after']}.  ",
        f"Gate: frozen `{config.backbone}` ({config.weights}) pooled features at {config.size} px; logistic "
        f"regressions for view and polarity; {ood_method} for out-of-distribution, refuse above "
        f"{config.ood_refuse_margin} x the {config.ood_refuse_quantile} quantile of held-out chest films' distances, "
        f"warn above their {config.ood_warn_quantile} quantile.",
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
        f"**Through the service.** Each of the {service['laterals']} real ieee8023 laterals, uploaded as a PNG to the "
        f"service pipeline holding its fold's gate (`AnalysisPipeline(gate=...)`, the code path of `POST "
        f"/v1/analyze`): {service['refused']} refused with 422, {service['reason_names_lateral']} of them with a "
        f"reason naming the lateral view; {service['laterals'] - service['refused']} let through (called frontal "
        f"and in distribution).",
        "",
        "| inversion check | value (95 % CI) |",
        "|---|---|",
        f"| inverted films detected | {fmt(inv['inverted_recall'])} |",
        f"| correctly displayed films left alone | {fmt(inv['displayed_specificity'])} |",
        "",
        "## Not a chest radiograph",
        "",
        f"{res['n_nonchest_pictures']} non-chest pictures, each judged by all {res['folds']} fold gates: the "
        "scikit-image sample images (photographs, microscopy, astronomy, text, a retina, a CT-like phantom; each "
        "also flipped and cropped twice) and generated pictures (smooth noise, gradients, shapes, printed pages). "
        "They are never used to fit the gate or to set its thresholds.",
        "",
        "| out-of-distribution check | value |",
        "|---|---|",
        f"| AUROC chest films vs non-chest pictures | {ood['auroc_chest_vs_nonchest']:.4f} |",
        f"| non-chest pictures refused | {ood['nonchest_refused']:.3f} |",
        f"| non-chest pictures warned or refused | {ood['nonchest_warned_or_refused']:.3f} |",
        f"| held-out chest films refused as non-chest (95 % CI) | {fmt(ood['chest_refused'])} |",
        f"| held-out chest films warned or refused (95 % CI) | {fmt(ood['chest_warned_or_refused'])} |",
        "",
        "Both distance methods on the same folds (the gate's default is the first):",
        "",
        "| method | AUROC | non-chest refused | non-chest warned or refused | chest films refused "
        "| chest films warned |",
        "|---|---|---|---|---|---|",
        *[f"| {r['method']} | {r['auroc']:.4f} | {r['refused']:.3f} | {r['warned_or_refused']:.3f} | "
          f"{fmt(r['chest_refused'])} | {fmt(r['chest_warned'])} |"
          for r in sorted(ood_rows, key=lambda r: r['method'] != config.ood_method)],
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
    missed_p = ", ".join(f"{p:.2f}" for p in sorted(missed["view_prob"]))
    false_lat = lat[(lat["lateral"] == 0) & (lat["view_prob"] > config.view_threshold)]
    lines += [
        "",
        f"Laterals missed: {len(missed)}" + (f" (lateral probability {missed_p})" if len(missed) else "")
        + f"; frontal films called lateral: {len(false_lat)}"
        + (f" (largest lateral probability among them {false_lat['view_prob'].max():.2f})" if len(false_lat) else "")
        + ".",
        "",
        "## Speed",
        "",
        f"Features of {timing.get('films')} films, each as displayed and inverted: {timing.get('feature_seconds')} s "
        f"({timing.get('films_per_s')} forward passes/s incl. reading, batch {config.batch_size}, at load "
        f"{timing.get('load_before')} while other jobs shared the two cores: a lower bound); a check costs one "
        "forward pass, two when the film is inverted. The features are cached, so re-running the command with them "
        "in place redoes only the cross-validation.",
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
    service = service_refusals(res, table, config)
    ood_rows = ood_comparison(table, other, config, args.folds)
    res["load_after"] = load_average()
    res["oof"].to_csv(args.results / "out_of_fold.csv", index=False)
    atomic_write_json(args.results / "results.json", json_safe(
        {k: v for k, v in res.items() if k not in ("oof", "fold_models", "fold_of_row")}
        | {"timing": timing, "machine": machine, "service": service, "ood_methods": ood_rows}))
    command = "python bench/quality.py " + " ".join(f"--data {d}" for d in args.data)
    report(res, timing, config, machine, args.doc, command, service, ood_rows)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
