"""The study report (``DIR/report.md`` and ``DIR/report.html`` from the same tables): the screen ranking
(Table 3 analogue), the cross-validation mean ± sd and pooled out-of-fold scores (Tables 4-5), the joint
selection, the final model against the readers (Tables 6-7: multiclass and the three binary collapses) and
subgroup tables (Table 8: right/left/average with patient-bootstrap CIs).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from cxrlab.errors import InputError
from cxrlab.evaluate.ordinal import COLLAPSES, ordinal_metrics
from cxrlab.utils import atomic_path, atomic_write_bytes

Table = tuple[list[str], list[list[Any]]]
AGE_BANDS = (0, 40, 60, 80, 200)
SCREEN_KEYS = ["macro_mae", "mae", "ma_hcs", "weighted_f1", "accuracy", "kappa_quadratic"]
CV_KEYS = ["weighted_precision", "weighted_recall", "weighted_f1", "macro_mae", "ma_hcs"]
READER_KEYS = ["mae", "macro_mae", "weighted_precision", "weighted_recall", "weighted_f1", "accuracy",
               "kappa_quadratic"]


def _with_ci(value: Any, ci: Any) -> str:
    """``0.419 [0.392, 0.447]``; the value alone when no interval was recorded (older study directories)."""
    return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(value)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _est(e: dict | None) -> str:
    if not e:
        return "–"
    return f"{_fmt(e.get('value'))} [{_fmt(e.get('low'))}, {_fmt(e.get('high'))}]"


class Doc:
    def __init__(self) -> None:
        self.parts: list[tuple[str, Any]] = []

    def h(self, text: str, level: int = 2) -> None:
        self.parts.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.parts.append(("p", text))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.parts.append(("t", (header, rows)))

    def img(self, path: str, caption: str) -> None:
        """A picture, by its path relative to the report (``figures/...``)."""
        self.parts.append(("i", (path, caption)))

    def markdown(self) -> str:
        out = []
        for kind, x in self.parts:
            if kind == "h":
                out.append(f"{'#' * x[0]} {x[1]}\n")
            elif kind == "p":
                out.append(f"{x}\n")
            elif kind == "i":
                out.append(f"![{x[1]}]({x[0]})\n")
            else:
                header, rows = x
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
                out.append("")
        return "\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, x in self.parts:
            if kind == "h":
                body.append(f"<h{x[0]}>{html.escape(x[1])}</h{x[0]}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(x)}</p>")
            elif kind == "i":
                body.append(f"<figure><img src='{html.escape(x[0])}' alt='{html.escape(x[1])}' "
                            f"style='max-width:100%'><figcaption>{html.escape(x[1])}</figcaption></figure>")
            else:
                header, rows = x
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
                trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
                 "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _combo_cells(combo: str, grid_keys: list[str]) -> list[str]:
    """The grid values of a combination, from its id (``value1__value2__...``, one part per grid key)."""
    parts = combo.split("__")
    return parts if len(parts) == len(grid_keys) else [combo] + [""] * (len(grid_keys) - 1)


def reader_predictions(out: Path, spec: dict, sides: list[str | None], lung_model: str | None) -> pd.DataFrame:
    """The best model(s)' grades (``model_<side>``) and expected grades (``model_score_<side>``) on the readers'
    images, cached in ``DIR/readers_predictions.parquet`` (a cache from before the scores were kept is redone)."""
    cache = out / "readers_predictions.parquet"
    if cache.is_file():
        cached = pd.read_parquet(cache)
        if {"model_score_right", "model_score_left"} <= set(cached.columns):
            return cached
    from cxrlab.data.manifest import load_manifest
    from cxrlab.study.prepare import reader_grades
    from cxrlab.train import load_run

    df = load_manifest(out / "data" / "readers.csv").df
    res = df[[c for c in ("image", "patient_id", "sex", "age", "view", "source_dataset") if c in df]].copy()
    for name, r in spec["readers"].items():
        res[f"{name}_right"], res[f"{name}_left"] = reader_grades(df, r["right"]), reader_grades(df, r["left"])
    for s in sides:
        run = load_run(out / "best" / s if s else out / "best")
        pred = run.predict(df, lung_model=lung_model, mask_cache=out / "lung_masks")
        for side in ([s] if s else ["right", "left"]):
            res[f"model_{side}"] = pred[f"pred_{spec['task_column']}_{side}"].to_numpy()
            res[f"model_score_{side}"] = pred[f"score_{spec['task_column']}_{side}"].to_numpy()
    with atomic_path(cache) as tmp:
        res.to_parquet(tmp, index=False)
    return res


def _pair_rows(a: np.ndarray, b: np.ndarray, pid: np.ndarray, n: int, n_boot: int) -> dict:
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return {}
    return ordinal_metrics(a[ok], b[ok], n, patient_ids=pid[ok], n_boot=n_boot)


def write_report(out: str | Path, n_boot: int = 1000, log: Callable[[str], None] = print) -> Path:
    """Write ``report.md`` and ``report.html`` of the study directory ``out`` from what it holds."""
    out = Path(out)
    if not (out / "stages.json").is_file():
        raise InputError(out, "not a study directory (no stages.json): run `cxrlab study run` first")
    spec = yaml.safe_load((out / "study.yaml").read_text())
    decisions = json.loads((out / "stages.json").read_text())
    data_info = json.loads((out / "data" / "data.json").read_text()) if (out / "data" / "data.json").is_file() else {}
    grid_keys = list(spec["grid"])
    preset = spec.get("preset")
    doc = Doc()
    doc.h(f"Study {spec['name']}" + (f" (preset {preset})" if preset else ""), 1)
    if spec.get("description"):
        doc.p(spec["description"])
    if spec.get("reference"):
        doc.p(f"Reference: {spec['reference']}")
    doc.h("Set-up")
    doc.p(f"Base recipe {spec['recipe']}; overrides for every trial: {', '.join(spec['set']) or 'none'}.")
    if preset and preset in spec.get("presets", {}):
        p = spec["presets"][preset]
        doc.p(f"Preset {preset}: {p.get('description', '')} Budget reductions: overrides "
              f"{', '.join(p['set']) or 'none'}; "
              + (f"training data sub-sampled to {p['max_patients']} patients" if p.get("max_patients")
                 else "every patient of the training data")
              + f"; HCS on {spec['hcs_images']} test images per trial.")
    for role, info in data_info.items():
        doc.p(f"Data ({role}): {info['source']} via preparer {info['prepare']}: {info['rows']} images, "
              f"{info['patients']} patients" + (f"; sub-sampled to {info['subsampled_to_patients']} patients "
                                                f"({info['rows_kept']} images)" if "subsampled_to_patients" in info
                                                else "") + ".")
    doc.p(f"Grid: " + "; ".join(f"{k} ∈ {v}" for k, v in spec["grid"].items()) +
          f". Sides: {spec.get('sides') or 'one model for both lungs'}. {spec['folds']} patient-level folds "
          "(one split file per fold, the same for every combination and side).")
    for k, text in spec.get("grid_labels", {}).items():
        doc.p(f"{k}: {text}")
    for note in spec.get("notes", []):
        doc.p(note)
    doc.p(f"HCS definition: {spec['hcs']} (cxrlab.explain.hcs); MA-HCS = mean over true grades of the mean "
          "per-image HCS, on a seeded sample of each trial's test images.")
    for stage in decisions["stages"]:
        for side, rec in stage["sides"].items():
            if stage["kind"] == "screen":
                doc.h(f"Screen on fold {stage['fold']} ({side}) — Table 3 analogue, ranked by {stage['metric']}")
                rows = [[i + 1, *_combo_cells(r["combo"], grid_keys), *[_fmt(r.get(k)) for k in SCREEN_KEYS],
                         "kept" if r["combo"] in rec["kept"] else ""] for i, r in enumerate(rec["ranking"])]
                doc.table(["rank", *grid_keys, *SCREEN_KEYS, ""], rows)
                _screen_figure(doc, out, spec, stage, side, rec)
            elif stage["kind"] == "cv":
                doc.h(f"{stage['folds']}-fold cross-validation ({side}) — Tables 4-5 analogue (mean ± sd over "
                      "folds; pooled out-of-fold)")
                rows = []
                for c, r in rec.items():
                    ms = r["mean_sd"]
                    rows.append([*_combo_cells(c, grid_keys),
                                 *[f"{_fmt(ms.get(k, {}).get('mean'))} ± {_fmt(ms.get(k, {}).get('sd'))}"
                                   for k in CV_KEYS], _with_ci(r["pooled"].get("macro_mae"), r["pooled"].get("macro_mae_ci")),
                                 _fmt(r["pooled"].get("macro_mae_mode")), _fmt(r["pooled"].get("macro_mae_median")),
                                 r["pooled"].get("n")])
                doc.table([*grid_keys, *CV_KEYS, "pooled OOF macro_mae [95 % CI]", "… most probable grade",
                           "… median grade", "OOF lungs"], rows)
            elif stage["kind"] == "select":
                doc.h(f"Selection ({side})")
                doc.p(f"Rule: {stage.get('rule') or stage['criterion']}. Chosen: {rec['best']}.")
                rows = [[c, *[v for k, v in t.items()]] for c, t in sorted(rec["ranks"].items(),
                                                                             key=lambda kv: kv[1]["rank_sum"])]
                first = next(iter(rec["ranks"].values()))
                doc.table(["combination", *first.keys()], rows)
                _pooled_confusion(doc, out, spec, side, rec["best"])
            elif stage["kind"] == "final":
                doc.h(f"Final model ({side}) on a fresh split (seed {stage['seed']})")
                t = rec["test"]
                doc.p(f"{rec['combo']} retrained; written as {rec['run_dir']} (an ordinary run directory).")
                doc.table(["n lungs", *SCREEN_KEYS], [[t.get("n"), *[_fmt(t.get(k)) for k in SCREEN_KEYS]]])
    _reader_sections(doc, out, spec, decisions, n_boot)
    md = doc.markdown()
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(doc.html(f"Study {spec['name']}"))
    log(f"report: {out / 'report.html'}")
    return out / "report.html"


def _reader_sections(doc: Doc, out: Path, spec: dict, decisions: dict, n_boot: int) -> None:
    final = next((s for s in decisions["stages"] if s["kind"] == "final"), None)
    if final is None:
        return
    sides = spec.get("sides") or [None]
    if spec.get("readers") and (out / "data" / "readers.csv").is_file():
        lung = (json.loads((out / "best" / (sides[0] or "") / "data_filter.json").read_text()).get("lung_masks")
                or {}).get("lung_run") if (out / "best" / (sides[0] or "") / "data_filter.json").is_file() else None
        df = reader_predictions(out, spec, sides, lung)
        readers = list(spec["readers"])
        raters = ["model", *readers]
        pid = df["patient_id"].astype(str).to_numpy()
        pairs = [(r, "model") for r in readers] + [(readers[i], readers[j]) for i in range(len(readers))
                                                   for j in range(i + 1, len(readers))]
        doc.h("Model and readers — Tables 6-7 analogue (reference first; patient-bootstrap 95 % CIs)")
        doc.p(f"{len(df)} images of the readers' set, {df['patient_id'].nunique()} patients. Per-lung reader grade "
              "= the mean of the reader's three zone scores of that lung, rounded. The readers' set is never "
              "trained on.")
        results: dict[tuple[str, str, str], dict] = {}
        for side in ("right", "left"):
            for a, b in pairs:
                results[(a, b, side)] = _pair_rows(df[f"{a}_{side}"].to_numpy(float),
                                                   df[f"{b}_{side}"].to_numpy(float), pid, spec["n_grades"], n_boot)
        rows = []
        for a, b in pairs:
            for side in ("right", "left"):
                m = results[(a, b, side)].get("metrics", {})
                rows.append([f"{a} vs {b}", side, results[(a, b, side)].get("n", 0),
                             *[_est(m.get(k)) for k in READER_KEYS]])
            avg = [np.mean([results[(a, b, s)].get("metrics", {}).get(k, {}).get("value", np.nan)
                            for s in ("right", "left")]) for k in READER_KEYS]
            rows.append([f"{a} vs {b}", "average", "", *[_fmt(float(v)) for v in avg]])
        doc.table(["pair", "side", "n", *READER_KEYS], rows)
        _reader_confusions(doc, out, df, raters, readers[0], spec["n_grades"])
        doc.h("Mean grade per rater")
        ref = readers[0]
        doc.p(f"A systematic offset (a model that grades another hospital's lungs higher or lower than its readers) "
              f"shows here, not in the MAE alone. Shares: lungs graded above / below the {ref} reader.")
        rows = []
        for rater in raters:
            cells: list[Any] = [rater]
            for side in ("right", "left"):
                mine, theirs = df[f"{rater}_{side}"].to_numpy(float), df[f"{ref}_{side}"].to_numpy(float)
                ok = np.isfinite(mine) & np.isfinite(theirs)
                cells += [_fmt(float(np.mean(mine[ok])) if ok.any() else np.nan, 2),
                          "" if rater == ref or not ok.any() else
                          f"{np.mean(mine[ok] > theirs[ok]):.0%} / {np.mean(mine[ok] < theirs[ok]):.0%}"]
            rows.append(cells)
        doc.table(["rater", "right mean", f"right above / below {ref}", "left mean", f"left above / below {ref}"], rows)
        _relabelling_section(doc, df, raters, ref, pid, spec["n_grades"], n_boot)
        doc.h("Binary collapses (Table 7 analogue)")
        rows = []
        for a, b in pairs:
            for side in ("right", "left"):
                m = results[(a, b, side)].get("metrics", {})
                rows.append([f"{a} vs {b}", side, *[_est(m.get(f"{c}.weighted_f1")) for c in COLLAPSES]])
        doc.table(["pair", "side", *[f"{c} weighted F1" for c in COLLAPSES]], rows)
        _subgroups(doc, df, spec, readers[0], n_boot, "the readers' set")
    test_rows = []
    for s in sides:
        run = out / "best" / s if s else out / "best"
        if (run / "predictions.parquet").is_file():
            p = pd.read_parquet(run / "predictions.parquet")
            test_rows.append(p[p["split"] == "test"])
    if test_rows:
        t = test_rows[0].copy()
        train_csv = out / "data" / "train.csv"
        if train_csv.is_file():  # sex, age... are manifest columns, not prediction columns
            from cxrlab.data.manifest import load_manifest

            extra = load_manifest(train_csv).df
            cols = [c for c in spec.get("subgroups", []) if c in extra.columns and c not in t.columns]
            t = t.merge(extra[["image", *cols]].drop_duplicates("image"), on="image", how="left")
        for s, part in zip(sides, test_rows):
            for side in ([s] if s else ["right", "left"]):
                col = f"{spec['task_column']}_{side}"
                t[f"truth_{side}"] = part.set_index("image")[col].reindex(t["image"]).to_numpy()
                t[f"model_{side}"] = part.set_index("image")[f"pred_{col}"].reindex(t["image"]).to_numpy()
        _subgroups(doc, t, spec, "truth", n_boot, "the final split's test part")


def _save_figure(out: Path, name: str, png: bytes) -> str:
    """Write a report picture under ``DIR/figures/``; returns its path relative to the report."""
    atomic_write_bytes(out / "figures" / name, png)
    return f"figures/{name}"


def _grade_confusion(truth: np.ndarray, other: np.ndarray, n_grades: int) -> np.ndarray:
    from cxrlab.evaluate.multiclass import confusion_matrix

    ok = np.isfinite(truth) & np.isfinite(other)
    return confusion_matrix(truth[ok].astype(int), other[ok].astype(int), n_grades)


def _screen_figure(doc: Doc, out: Path, spec: dict, stage: dict, side: str, rec: dict) -> None:
    """The screen's candidates on the two selection axes (ranking metric, MA-HCS); kept ones filled."""
    from cxrlab.evaluate.figures import ranking_scatter_figure

    varying = [i for i, values in enumerate(spec["grid"].values()) if len(values) > 1]
    points = []
    for r in rec["ranking"]:
        cells = _combo_cells(r["combo"], list(spec["grid"]))
        label = "/".join(cells[i] for i in varying) or r["combo"]
        x, y = r.get(stage["metric"]), r.get("ma_hcs")
        points.append((label, np.nan if x is None else float(x), np.nan if y is None else float(y),
                       r["combo"] in rec["kept"]))
    rel = _save_figure(out, f"screen_{side}.png", ranking_scatter_figure(
        points, stage["metric"], "MA-HCS",
        f"screen on fold {stage['fold']}, {side}"))
    doc.img(rel, f"Screen ({side}): every combination by {stage['metric']} and MA-HCS; filled = kept")


def _pooled_confusion(doc: Doc, out: Path, spec: dict, side: str, combo: str) -> None:
    """Pooled out-of-fold confusion matrix of the chosen combination (rows true grade, columns predicted)."""
    from cxrlab.evaluate.figures import confusion_panels_figure

    path = out / "oof" / f"{combo}__{side}.parquet"
    if not path.is_file():
        return
    oof = pd.read_parquet(path)
    n = spec["n_grades"]
    panels, rows = [], []
    for lung in ([side] if side in ("right", "left") else ["right", "left"]):
        col = f"{spec['task_column']}_{lung}"
        if col not in oof or f"pred_{col}" not in oof:
            continue
        cm = _grade_confusion(oof[col].to_numpy(float), oof[f"pred_{col}"].to_numpy(float), n)
        panels.append((f"{lung} lung, pooled out-of-fold", cm, "predicted grade", "true grade"))
        rows += [[lung, g, *cm[g].tolist()] for g in range(n)]
    if not panels:
        return
    doc.p(f"Pooled out-of-fold confusion of {combo} ({side}); rows true grade, columns predicted grade.")
    doc.table(["lung", "true grade", *[f"pred {g}" for g in range(n)]], rows)
    rel = _save_figure(out, f"cv_confusion_{side}.png", confusion_panels_figure(panels, [str(g) for g in range(n)]))
    doc.img(rel, f"Pooled out-of-fold confusion of the chosen combination ({side})")


def _reader_confusions(doc: Doc, out: Path, df: pd.DataFrame, raters: list[str], ref: str, n_grades: int) -> None:
    """Each rater's grades against the first reader's, per lung (rows: the reference reader)."""
    from cxrlab.evaluate.figures import confusion_panels_figure

    for side in ("right", "left"):
        panels = [(f"{rater} vs {ref}, {side}", _grade_confusion(df[f"{ref}_{side}"].to_numpy(float),
                                                                  df[f"{rater}_{side}"].to_numpy(float), n_grades),
                   rater, ref) for rater in raters if rater != ref]
        rel = _save_figure(out, f"readers_{side}.png",
                           confusion_panels_figure(panels, [str(g) for g in range(n_grades)]))
        doc.img(rel, f"{side} lung: each rater's grade (columns) against the {ref} reader's (rows)")


def _relabelling_section(doc: Doc, df: pd.DataFrame, raters: list[str], ref: str, pid: np.ndarray, n_grades: int,
                         n_boot: int) -> None:
    """Scale or ordering: each rater's MAE against ``ref`` after the best monotone relabelling of its grades."""
    from cxrlab.evaluate.agreement import relabelled_mae

    doc.h(f"Scale or ordering? Each rater against the {ref} reader after relabelling its grades")
    doc.p(f"A rater may order lungs as the {ref} reader does but on another scale (the model learns the share of "
          "the lung that is opaque; BrixIA readers grade the kind of opacity). The best non-decreasing relabelling "
          f"of a rater's grades onto the {ref} reader's removes a difference of scale but not of ordering. In "
          "sample: the map fitted on these very lungs (an optimistic bound: no relabelling does better here). "
          "Cross-fitted: the map fitted on the other patients of 5 patient folds and applied to the held-out "
          "fold (what calibrating on part of a hospital's patients would give on the rest; patient-bootstrap 95 % "
          "CI). If the in-sample bound of the model stays above the readers' own MAE, no calibration of the "
          "model's scale reaches the readers' agreement. The model's expected grade (the mean of its grade "
          "distribution) is a finer rating than its grade and is relabelled the same way.")
    rows = []
    ratings = [(rater, rater) for rater in raters if rater != ref]
    if "model" in raters and "model_score_right" in df:  # the expected grade is finer than the grade
        ratings.insert(1, ("model (expected grade)", "model_score"))
    for label, column in ratings:
        for side in ("right", "left"):
            a, b = df[f"{ref}_{side}"].to_numpy(float), df[f"{column}_{side}"].to_numpy(float)
            ok = np.isfinite(a) & np.isfinite(b)
            if len(np.unique(pid[ok])) < 2:
                rows.append([label, side, int(ok.sum()), "–", "–", "–", "–"])
                continue
            r = relabelled_mae(a, b, n_grades, pid, n_boot=n_boot)
            graded = "–" if column == "model_score" else _fmt(float(np.abs(a[ok] - b[ok]).mean()))
            rows.append([label, side, r["n"], graded, ", ".join(_fmt(c, 2) for c in r["cutpoints"]),
                         _fmt(r["in_sample"]), _est(r["cross_fitted"])])
    doc.table(["rater", "side", "n", "MAE as graded", "in-sample cut-points (grade = cut-points passed)",
               "MAE after in-sample map (bound)", "MAE after cross-fitted map"], rows)


def _subgroups(doc: Doc, df: pd.DataFrame, spec: dict, reference: str, n_boot: int, where: str) -> None:
    from cxrlab.evaluate.subgroups import bin_column

    doc.h(f"Subgroups on {where} — Table 8 analogue (model vs {reference}: MAE [95 % CI], right / left / average)")
    rows = []
    for by in spec.get("subgroups", []):
        if by not in df.columns or df[by].isna().all():
            rows.append([by, "not recorded", "", "", "", ""])
            continue
        column = bin_column(df[by], AGE_BANDS) if by == "age" else df[by].astype(object)
        column = column.where(column.notna(), "missing").astype(str)
        for level in sorted(column.unique()):
            sub = df[column == level]
            pid = sub["patient_id"].astype(str).to_numpy()
            cells = []
            vals = []
            for side in ("right", "left"):
                r = _pair_rows(sub[f"{reference}_{side}"].to_numpy(float), sub[f"model_{side}"].to_numpy(float),
                               pid, spec["n_grades"], n_boot)
                m = r.get("metrics", {}).get("mae")
                cells.append(_est(m))
                vals.append(m["value"] if m else np.nan)
            warn = "too few patients" if sub["patient_id"].nunique() < 20 else ""
            rows.append([by, level, sub["patient_id"].nunique(), *cells, _fmt(float(np.nanmean(vals)))
                         if np.isfinite(vals).any() else "–", warn])
    doc.table(["subgroup", "level", "patients", "right MAE", "left MAE", "average", "note"],
              [r if len(r) == 7 else [*r[:2], r[2], r[3], r[4], r[5], ""] for r in rows])
