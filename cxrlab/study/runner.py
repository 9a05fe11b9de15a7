"""``run_study``: a study's protocol, stage by stage, on the folds made once, every trial through Ray Tune.

Layout of the study directory ``DIR``::

    study.yaml            the resolved study (preset applied); a rerun must use the same study and preset
    data/                 the prepared manifests (train.csv, readers.csv) and data.json (what was sub-sampled)
    splits/               fold<k>.csv (one patient-level split per fold, made once, used by every combination)
                          and final.csv (the fresh split of the final stage)
    trials/<combo>/<side>/fold<k>|final/   ordinary cxrlab run directories, each with trial.json
    cache/  lung_masks/   the feature/input cache and lung-mask cache shared by all trials
    ray/                  the Tune experiments (restored after a kill)
    stages.json           what each stage decided (ranking, kept, selected)
    best/ (or best/<side>/ for per-side studies)   the chosen model(s), ordinary run directories
    oof/<combo>__<side>.parquet   pooled out-of-fold test predictions of the cross-validated combinations
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from cxrlab.data.manifest import Manifest, load_manifest, save_manifest
from cxrlab.errors import ConfigError, InputError
from cxrlab.study.grid import Combination, expand_grid, joint_best, rank
from cxrlab.study.prepare import PREPARERS
from cxrlab.study.spec import StudySpec, load_study
from cxrlab.study.trial import (macro_mae_by_decision, pooled_macro_mae_ci, score_grades, side_overrides,
                                test_predictions)
from cxrlab.utils import atomic_write_json, atomic_write_text

SIDELESS = "both"


def _side_name(side: str | None) -> str:
    return side or SIDELESS


def prepare_data(spec: StudySpec, data: Sequence[str | os.PathLike], out: Path, max_patients: int | None
                 ) -> dict[str, Path]:
    """The prepared manifests by role (``train``, ``readers``), written once under ``out/data``."""
    if len(data) != len(spec.data):
        roles = ", ".join(f"{d.role} ({d.prepare})" for d in spec.data)
        raise ConfigError(f"study {spec.name} takes {len(spec.data)} --data manifest(s) in this order: {roles}; "
                          f"got {len(data)}")
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    report: dict[str, Any] = {}
    for role, given in zip(spec.data, data):
        target = folder / f"{role.role}.csv"
        paths[role.role] = target
        if target.is_file():
            continue
        prepared = PREPARERS.get(role.prepare)(load_manifest(given))
        df = prepared.df
        info = {"source": str(Path(given).resolve()), "prepare": role.prepare, "rows": int(len(df)),
                "patients": int(df["patient_id"].nunique())}
        if role.role == "train" and max_patients is not None and df["patient_id"].nunique() > max_patients:
            rng = np.random.default_rng(spec.seed)
            keep = rng.choice(sorted(df["patient_id"].astype(str).unique()), max_patients, replace=False)
            df = df[df["patient_id"].astype(str).isin(set(keep))].reset_index(drop=True)
            info.update(subsampled_to_patients=max_patients, rows_kept=int(len(df)))
        if not len(df):
            raise InputError(given, f"no row left after preparer {role.prepare}")
        report[role.role] = info
        save_manifest(Manifest(df), target)
    if report:
        old = json.loads((folder / "data.json").read_text()) if (folder / "data.json").is_file() else {}
        atomic_write_json(folder / "data.json", {**old, **report})
    return paths


def make_splits(spec: StudySpec, train_manifest: Path, out: Path) -> dict[str, Path]:
    """One split table per fold (patient-level k-fold, val carved from the training folds) and the final
    stage's fresh ratio split, made once from the base recipe, shared by every combination and side."""
    from cxrlab.data.splits import save_split
    from cxrlab.recipes.loader import load_recipe
    from cxrlab.train.data import build_table
    from cxrlab.train.trainer import build_tasks
    from cxrlab.train.inputs import InputPipeline

    folder = out / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {f"fold{k}": folder / f"fold{k}.csv" for k in range(spec.folds)}
    final = next((s for s in spec.protocol if s.kind == "final"), None)
    if final is not None:
        paths["final"] = folder / "final.csv"
    manifests = [load_manifest(train_manifest)]
    strat = [f"split.stratify={spec.stratify}"] if spec.stratify else []
    for name, path in paths.items():
        if path.is_file():
            continue
        if name == "final":
            sets = [f"split.ratios={json.dumps(final.ratios)}", "split.folds=0", f"seed={final.seed}"]
        else:
            sets = [f"split.folds={spec.folds}", f"split.fold={name[4:]}", f"seed={spec.seed}"]
        recipe = load_recipe(spec.recipe, [*spec.set, *strat, *sets])
        pipeline = InputPipeline(recipe.input)
        table, _ = build_table(recipe, manifests, build_tasks(recipe, pipeline), pipeline.per_image)
        save_split(table.df, path)
    return paths


class Study:
    """A study being run in ``out``: trial configs, stages, and their decisions."""

    def __init__(self, spec: StudySpec, data: dict[str, Path], splits: dict[str, Path], out: Path,
                 lung_model: str | None, address: str | None, num_cpus: int | None, log: Callable[[str], None]):
        self.spec, self.data, self.splits, self.out = spec, data, splits, out
        self.lung_model, self.address, self.num_cpus, self.log = lung_model, address, num_cpus, log
        self.combos = {c.id: c for c in expand_grid(spec.grid)}
        self.sides: list[str | None] = list(spec.sides) if spec.sides else [None]
        self.counter: dict[str, Any] = {"done": set(), "total": 0}

    def column(self, side: str | None) -> str:
        return f"{self.spec.task_column}_{side}" if side else self.spec.task_column

    def trial(self, combo: Combination, fold: int | str, side: str | None) -> dict[str, Any]:
        base = [*self.spec.set, *combo.overrides(), f"train.cache_dir={(self.out / 'cache').resolve()}"]
        overrides = base + side_overrides(self.spec.recipe, base, side)
        fold_name = f"fold{fold}" if isinstance(fold, int) else fold
        run_dir = self.out / "trials" / combo.id / _side_name(side) / fold_name
        return {"id": f"{combo.id}/{_side_name(side)}/{fold_name}", "combo": combo.id, "fold": fold, "side": side,
                "recipe": self.spec.recipe, "overrides": overrides, "run_dir": str(run_dir.resolve()),
                "split": str(self.splits[fold_name].resolve()), "data": [str(self.data["train"].resolve())],
                "lung_model": None if self.lung_model is None else str(Path(self.lung_model).resolve()),
                "mask_cache": str((self.out / "lung_masks").resolve()), "column": self.column(side),
                "n_grades": self.spec.n_grades, "hcs_images": self.spec.hcs_images, "hcs": self.spec.hcs,
                "seed": self.spec.seed}

    def run(self, name: str, trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from cxrlab.study.engine import run_trials
        return run_trials(trials, self.out / "ray", name, address=self.address, num_cpus=self.num_cpus,
                          log=self.log, counter=self.counter)

    def planned_trials(self) -> int:
        n_side = len(self.sides)
        total, kept = 0, len(self.combos)
        for stage in self.spec.protocol:
            if stage.kind == "screen":
                total += kept * n_side
                kept = min(stage.top, kept)
            elif stage.kind == "cv":
                screened = any(s.kind == "screen" for s in self.spec.protocol)
                total += kept * n_side * (self.spec.folds - (1 if screened else 0))
            elif stage.kind == "final":
                total += n_side
        return total

    def pooled(self, combo: str, side: str | None) -> pd.DataFrame:
        """Pooled out-of-fold test predictions of ``combo`` for ``side`` (every fold's test part)."""
        parts = []
        for k in range(self.spec.folds):
            run_dir = self.out / "trials" / combo / _side_name(side) / f"fold{k}"
            parts.append(test_predictions(run_dir, self.column(side)).assign(fold=k))
        return pd.concat(parts, ignore_index=True)


#: study-file keys that only describe (printed in the report): editing them does not change any trial
DESCRIPTIVE_KEYS = ("description", "reference", "grid_labels", "notes", "selection_rule")


def same_trials(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether two resolved study files define the same study, ignoring their descriptive text (top level and
    presets' descriptions): a study directory may be resumed under an edited description, not another grid."""
    def strip(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k not in DESCRIPTIVE_KEYS}
        out["presets"] = {name: {k: v for k, v in (p or {}).items() if k != "description"}
                          for name, p in (d.get("presets") or {}).items()}
        return out

    return strip(saved) == strip(current)


def run_study(study: str | os.PathLike | StudySpec, data: Sequence[str | os.PathLike], out: str | os.PathLike,
              lung_model: str | os.PathLike | None = None, address: str | None = None, preset: str | None = None,
              num_cpus: int | None = None, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the study's whole protocol into ``out``; returns ``out``. See the module doc."""
    import time

    t_start = time.time()
    spec = study if isinstance(study, StudySpec) else load_study(study)
    max_patients = spec.presets[preset].max_patients if preset and preset in spec.presets else None
    spec = spec.with_preset(preset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump({**spec.model_dump(mode="json"), "preset": preset}, sort_keys=False)
    saved = out / "study.yaml"
    if saved.is_file() and saved.read_text() != resolved:
        if not same_trials(yaml.safe_load(saved.read_text()), yaml.safe_load(resolved)):
            raise ConfigError(f"{out} holds another study (or preset): its study.yaml differs; use another --out")
        atomic_write_text(saved, resolved)  # only the words changed: the report prints the current ones
        log("study.yaml: only descriptive text changed (descriptions, labels, notes); the trials are kept")
    if lung_model is not None and not Path(lung_model).is_dir():
        raise InputError(lung_model, "no such lung run directory")
    if not saved.is_file():
        atomic_write_text(saved, resolved)
    _record_time(out, t_start, None)  # an invocation killed later stays listed (without an end)
    paths = prepare_data(spec, data, out, max_patients)
    splits = make_splits(spec, paths["train"], out)
    st = Study(spec, paths, splits, out, None if lung_model is None else str(lung_model), address, num_cpus, log)
    st.counter["total"] = st.planned_trials()
    decisions: dict[str, Any] = {"preset": preset, "stages": []}
    kept: dict[str | None, list[str]] = {s: list(st.combos) for s in st.sides}
    cv_scores: dict[str | None, dict[str, dict[str, float]]] = {}
    chosen: dict[str | None, str] = {}
    for i, stage in enumerate(spec.protocol):
        name = f"stage{i}-{stage.kind}"
        if stage.kind == "screen":
            trials = [st.trial(st.combos[c], stage.fold, s) for s in st.sides for c in kept[s]]
            res = st.run(name, trials)
            record: dict[str, Any] = {"kind": "screen", "fold": stage.fold, "metric": stage.rank_by.name, "sides": {}}
            for s in st.sides:
                scores = {c: res[st.trial(st.combos[c], stage.fold, s)["id"]]["scores"] for c in kept[s]}
                order = rank(scores, stage.rank_by.name, stage.rank_by.goal)
                kept[s] = order[:stage.top]
                record["sides"][_side_name(s)] = {"ranking": [{"combo": c, **scores[c]} for c in order],
                                                  "kept": kept[s]}
            decisions["stages"].append(record)
        elif stage.kind == "cv":
            trials = [st.trial(st.combos[c], k, s) for s in st.sides for c in kept[s] for k in range(spec.folds)]
            res = st.run(name, trials)
            record = {"kind": "cv", "folds": spec.folds, "sides": {}}
            (out / "oof").mkdir(exist_ok=True)
            for s in st.sides:
                cv_scores[s] = {}
                rows = {}
                for c in kept[s]:
                    per_fold = [res[st.trial(st.combos[c], k, s)["id"]]["scores"] for k in range(spec.folds)]
                    oof = st.pooled(c, s)
                    oof.to_parquet(out / "oof" / f"{c}__{_side_name(s)}.parquet", index=False)
                    col = st.column(s)
                    pooled = score_grades(oof[col].to_numpy(), oof[f"pred_{col}"].to_numpy(), spec.n_grades)
                    pooled.update(macro_mae_by_decision(oof, col, spec.n_grades))
                    pooled["macro_mae_ci"] = pooled_macro_mae_ci(oof, col, spec.n_grades, spec.seed)
                    summary = fold_summary(per_fold)
                    cv_scores[s][c] = {**pooled, "ma_hcs": summary.get("ma_hcs", {}).get("mean", float("nan"))}
                    rows[c] = {"per_fold": per_fold, "mean_sd": summary, "pooled": pooled}
                record["sides"][_side_name(s)] = rows
            decisions["stages"].append(record)
        elif stage.kind == "select":
            record = {"kind": "select", "criterion": [m.model_dump() for m in stage.criterion],
                      "rule": spec.selection_rule, "sides": {}}
            for s in st.sides:
                best, table = joint_best(cv_scores[s], [(m.name, m.goal) for m in stage.criterion])
                chosen[s] = best
                record["sides"][_side_name(s)] = {"best": best, "ranks": table}
            decisions["stages"].append(record)
        elif stage.kind == "final":
            for s in st.sides:
                chosen.setdefault(s, kept[s][0])
            trials = [st.trial(st.combos[chosen[s]], "final", s) for s in st.sides]
            res = st.run(name, trials)
            record = {"kind": "final", "seed": stage.seed, "sides": {}}
            for s, t in zip(st.sides, trials):
                target = out / "best" if s is None else out / "best" / s
                _publish(Path(t["run_dir"]), target)
                record["sides"][_side_name(s)] = {"combo": chosen[s], "run_dir": str(target),
                                                  "test": res[t["id"]]["scores"]}
            decisions["stages"].append(record)
        atomic_write_json(out / "stages.json", _finite(decisions))
    _record_time(out, t_start, len(st.counter["done"]))
    from cxrlab.study.report import write_report

    write_report(out, log=log)
    return out


def _record_time(out: Path, t_start: float, trials: int | None) -> None:
    """This invocation in ``DIR/timing.json``: listed at its start, its wall time added at its end (a study
    resumed after a kill shows the killed invocation without an end)."""
    import time

    from cxrlab.machine import load_average

    path = out / "timing.json"
    old = json.loads(path.read_text()) if path.is_file() else {"invocations": []}
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start))
    entry = {"start": start, "load_average_at_start": load_average()}
    if trials is not None:
        entry.update(seconds=round(time.time() - t_start, 1), trials_done=trials, load_average_at_end=load_average())
    rest = [i for i in old["invocations"] if i["start"] != start]
    old["invocations"] = rest + [{**next((i for i in old["invocations"] if i["start"] == start), {}), **entry}]
    old["finished_seconds"] = round(sum(i.get("seconds", 0) for i in old["invocations"]), 1)
    atomic_write_json(path, old)


def fold_summary(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample sd over folds of every numeric score."""
    keys = [k for k, v in per_fold[0].items() if isinstance(v, (int, float)) and k != "n"]
    out = {}
    for k in keys:
        v = np.array([f.get(k) if f.get(k) is not None else np.nan for f in per_fold], dtype=float)
        ok = v[np.isfinite(v)]
        out[k] = {"mean": float(ok.mean()) if len(ok) else float("nan"),
                  "sd": float(ok.std(ddof=1)) if len(ok) > 1 else float("nan")}
    return out


def _publish(run_dir: Path, target: Path) -> None:
    """Copy the final run to ``target`` atomically (a temporary sibling renamed into place)."""
    if (target / "metrics.json").is_file():
        return
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(run_dir, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
