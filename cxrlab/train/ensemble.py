"""Train and use an ensemble run (issue #18, FLANNEL): ``cxrlab train <ensemble recipe> --data M1 --data M2 ...``.

1. Every ``--data`` manifest is pooled (``data.extra: pooled``); rows whose task label is outside the classes
   (after ``task.class_map``) are dropped and counted per source and label (``data_filter.json``).
2. One patient-level K-fold assignment (``folds.csv``, stratified on the class) is shared by every learner. For
   fold k, ``splits/fold<k>.csv`` puts fold k in ``test`` and splits the other folds' patients into
   ``train``/``val`` (early stopping), so a fold model never sees a fold-k patient.
3. Each base learner is an ordinary training run per fold (``learners/<name>/fold<k>/``); its ``test`` rows
   are its out-of-fold probabilities, assembled by :func:`cxrlab.ensemble.assemble_oof`, which refuses any
   probability a model produced for a patient it trained on (``oof.parquet``).
4. The combiner (and the baselines) are evaluated out-of-fold on those probabilities (a combiner fitted on the
   other folds predicts each fold, :func:`cxrlab.ensemble.cross_validate_combiner`): ``predictions.parquet``
   (the combiner's), ``combiner_predictions.parquet`` (all), ``metrics.json`` (per-class F1, macro-F1 per fold,
   mean and sd). Then each is fitted on all out-of-fold probabilities and saved (``combiners/<name>.pkl``).
5. ``cxrlab predict`` on the run (:class:`EnsembleModel`): every fold model of a learner predicts, the learner's
   probability is the mean over its K fold models, and the fitted combiner combines the learners.

Resumable: a finished fold model (``metrics.json``) is kept, an interrupted one continues from its
``checkpoints/last.pt``, one killed before its first checkpoint starts again.

Reuse (``reuse=OLD_RUN``, ``cxrlab train ... --reuse OLD_RUN``): a new run whose recipe changes some learners
takes every finished fold model of OLD_RUN whose learner recipe, fold split, lung run and training libraries
(:data:`TRAINING_PACKAGES`, from its ``metrics.json``) are identical to its own (hard-linked, else copied;
``learners/<name>/fold<k>/reused_from.json`` says from where) and trains the rest, so
adding or changing one learner does not retrain the others.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.data.splits import (FOLD, SPLIT, assert_patient_disjoint, film_digests, join_patients_by_film,
                                kfold_patients, split_patients)
from cxrlab.errors import ConfigError, InputError
from cxrlab.train.ensemble_config import KIND, EnsembleConfig
from cxrlab.utils import atomic_path, atomic_write_json, atomic_write_text

CLASS = "_class"
SPLIT_UNIT = "split_unit"  # patients joined by a shared film (join_same_films)
FINISHED = "ensemble.json"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] ensemble: {message}", file=sys.stderr, flush=True)


def is_ensemble_recipe(name_or_path: str | os.PathLike) -> bool:
    """Whether a recipe name or file declares ``kind: ensemble`` (False for anything unreadable: the normal
    loader then reports the problem)."""
    from cxrlab.recipes.loader import read_recipe_file, recipe_path

    try:
        raw = read_recipe_file(recipe_path(name_or_path))
    except (ConfigError, InputError):
        return False
    return isinstance(raw, dict) and raw.get("kind") == KIND


def is_ensemble_run(run_dir: str | os.PathLike) -> bool:
    return is_ensemble_recipe(Path(run_dir) / "recipe.yaml") if (Path(run_dir) / "recipe.yaml").is_file() else False


# --- data: pooled table, fold assignment, per-fold splits -------------------------------------------------------

def pooled_table(cfg: EnsembleConfig, manifests: list[Manifest]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every manifest pooled, rows with a class kept (``_class`` column), and what was dropped, per source."""
    from cxrlab.tasks import TaskSet
    from cxrlab.train.data import fuse_manifests, refuse_duplicate_films

    recipe = cfg.learner_recipe(cfg.learners[0])
    df = fuse_manifests(recipe, manifests)
    task = TaskSet.from_config([cfg.task]).tasks[0]
    if task.column not in df.columns:
        raise InputError(manifests[0].source or "manifest", "the ensemble's task column is missing", field=task.column)
    code = task._encode(task.column, df[task.column], "manifest")
    keep = ~np.isnan(code)
    source = df[schema.SOURCE_DATASET].astype(str) if schema.SOURCE_DATASET in df else pd.Series("?", index=df.index)
    dropped = (pd.DataFrame({"source": source[~keep], "label": df.loc[~keep, task.column].astype(str)})
               .value_counts().sort_index())
    kept = df[keep].reset_index(drop=True)
    refuse_duplicate_films(kept, manifests[0].source or "manifest")
    kept[CLASS] = np.array(task.classes, dtype=object)[code[keep].astype(int)]
    if not len(kept):
        raise InputError(manifests[0].source or "manifest", f"no row has a class among {task.classes}")
    report = {
        "rows_in": int(len(df)), "rows_kept": int(len(kept)), "rows_dropped": int((~keep).sum()),
        "dropped_reason": f"label outside {task.classes} after class_map {task.class_map}",
        "dropped_by_source_label": {f"{s} / {lab}": int(n) for (s, lab), n in dropped.items()},
        "kept_by_source_class": {f"{s} / {c}": int(n) for (s, c), n in
                                 kept.assign(_s=source[keep].to_numpy()).groupby(["_s", CLASS]).size().items()},
        "class_map": task.class_map, "patients": int(kept[schema.PATIENT_ID].nunique()),
    }
    return kept, report


def fold_assignment(cfg: EnsembleConfig, df: pd.DataFrame) -> pd.DataFrame:
    """``image, patient_id, fold, _class``: one patient-level K-fold split shared by every learner."""
    stratify = CLASS if cfg.stratify is None else cfg.stratify
    if df[schema.PATIENT_ID].nunique() < cfg.folds:
        raise InputError("manifest", f"{df[schema.PATIENT_ID].nunique()} patient(s) cannot fill {cfg.folds} folds")
    units = join_patients_by_film(df, film_digests(df)) if cfg.join_same_films \
        else df[schema.PATIENT_ID].astype(str)
    folds = kfold_patients(df.assign(**{schema.PATIENT_ID: units.to_numpy()}), cfg.folds, cfg.seed, stratify)
    out = df[[schema.IMAGE, schema.PATIENT_ID, CLASS]].copy()
    out[FOLD] = folds.to_numpy().astype(int)
    if cfg.join_same_films:
        out[SPLIT_UNIT] = units.to_numpy()
    assert_patient_disjoint(out, FOLD, source="fold assignment")
    return out


def fold_split(cfg: EnsembleConfig, assignment: pd.DataFrame, fold: int) -> pd.DataFrame:
    """``image, patient_id, split`` for fold ``fold``: it is ``test``; the others' patients train / val."""
    test = assignment[FOLD].to_numpy() == fold
    rest = assignment[~test]
    if SPLIT_UNIT in rest:  # patients sharing a film stay on one side of train / val too
        rest = rest.assign(**{schema.PATIENT_ID: rest[SPLIT_UNIT]})
    inner = split_patients(rest, (1 - cfg.val_fraction, cfg.val_fraction), cfg.seed + fold, CLASS)
    parts = pd.Series("test", index=assignment.index, dtype=object)
    parts[rest.index] = inner.map({"train": "train", "test": "val"}).to_numpy()
    out = assignment[[schema.IMAGE, schema.PATIENT_ID]].assign(**{SPLIT: parts.to_numpy()})
    assert_patient_disjoint(out, SPLIT, source=f"fold {fold} split")
    return out


# --- metrics --------------------------------------------------------------------------------------------------

def fold_scores(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class F1 (one vs rest), macro-F1 and accuracy per fold, and their mean and sd (ddof=1) over folds."""
    from sklearn.metrics import f1_score

    per_fold = []
    for k in sorted(np.unique(folds)):
        m = folds == k
        pred = probs[m].argmax(1)
        f1 = f1_score(y[m], pred, labels=list(range(len(classes))), average=None, zero_division=0)
        row = {"fold": int(k), "n": int(m.sum()), "accuracy": float((pred == y[m]).mean()),
               "macro_f1": float(f1.mean())}
        row.update({f"f1_{c}": float(f1[i]) for i, c in enumerate(classes)})
        per_fold.append(row)
    table = pd.DataFrame(per_fold)
    keys = ["macro_f1", "accuracy", *[f"f1_{c}" for c in classes]]
    return {"per_fold": per_fold,
            "mean": {k: float(table[k].mean()) for k in keys},
            "sd": {k: float(table[k].std(ddof=1)) if len(table) > 1 else 0.0 for k in keys}}


# --- training -------------------------------------------------------------------------------------------------

def _finished(run: Path) -> bool:
    return (run / "metrics.json").is_file() and (run / "checkpoints" / "best.pt").is_file()


def _split_rows(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str)
    return table.sort_values(list(table.columns)).reset_index(drop=True)


# Libraries whose version can change what a fold model learns from the same recipe and rows; cxrlab's own commit is
# not compared (every commit would refuse reuse; recipe changes are caught by the recipe comparison).
TRAINING_PACKAGES = ("numpy", "torch", "torchvision", "timm", "segmentation-models-pytorch", "scikit-learn")


def software_difference(recorded: dict[str, Any] | None) -> str | None:
    """Why a model trained with the ``recorded`` software (a run's ``metrics.json`` ``software``) may not be taken
    as if trained here, or None when every training library has the same version."""
    from cxrlab.versions import software_versions

    if not recorded:
        return "it records no software versions (trained by an older cxrlab)"
    here = software_versions()
    changed = [f"{name} {recorded.get(name, 'unrecorded')} there, {here[name]} here" for name in TRAINING_PACKAGES
               if recorded.get(name) != here[name]]
    return "trained with other library versions: " + "; ".join(changed) if changed else None


def reusable_fold(cfg: EnsembleConfig, learner, split_file: Path, lung_run: str | None, old_run: Path,
                  fold: int) -> tuple[Path | None, str]:
    """OLD_RUN's finished fold model of ``learner`` if it was trained exactly as this run would train it (the same
    resolved learner recipe, the same train/val/test rows, the same lung run and the same versions of the training
    libraries), else ``(None, why not)``."""
    from cxrlab.recipes.loader import load_recipe

    source = old_run / "learners" / learner.name / f"fold{fold}"
    if not _finished(source):
        return None, "no finished fold model there"
    try:
        theirs = load_recipe(source / "recipe.yaml").model_dump()
    except Exception as exc:  # an unreadable recipe is never reused
        return None, f"its recipe.yaml does not load ({exc})"
    if theirs != cfg.learner_recipe(learner).model_dump():
        return None, "its learner recipe differs"
    if not _split_rows(source / "split.csv").equals(_split_rows(split_file)):
        return None, "its fold split differs"
    old_filter = old_run / "data_filter.json"
    old_lung = json.loads(old_filter.read_text()).get("lung_run") if old_filter.is_file() else None
    if _same_path(old_lung) != _same_path(lung_run):
        return None, "it used another lung run"
    try:
        metrics = json.loads((source / "metrics.json").read_text())
        recorded = metrics.get("software") or (metrics.get("run") or {}).get("software")  # training runs: under run
    except (OSError, ValueError, AttributeError):
        return None, "its metrics.json does not load"
    why = software_difference(recorded)
    if why:
        return None, why
    return source, "identical"


def _same_path(path: Any) -> str | None:
    return None if path in (None, "") else str(Path(path).resolve())


def _link_tree(source: Path, target: Path) -> None:
    """Hard links where the file system allows (fold models are large and never rewritten once finished)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, copy_function=link)
    atomic_write_json(partial / "reused_from.json", {"run": str(source.parent.parent.parent.resolve()),
                                                     "fold_model": str(source.resolve())})
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)


def _train_fold(cfg: EnsembleConfig, learner, fold: int, run: Path, split_file: Path, manifests: list[Manifest],
                lung_model, mask_cache: Path, reuse: Path | None = None) -> str:
    from cxrlab.train.trainer import train

    if _finished(run):
        return "kept (finished before)"
    if reuse is not None and not (run / "checkpoints" / "last.pt").is_file():
        source, why = reusable_fold(cfg, learner, split_file, str(lung_model) if lung_model else None, reuse, fold)
        if source is not None:
            _link_tree(source, run)
            return f"reused from {reuse}"
        _log(f"learner {learner.name}, fold {fold + 1}: not reused from {reuse}: {why}")
    resume = (run / "checkpoints" / "last.pt").is_file()
    if not resume and run.exists():
        shutil.rmtree(run)  # stopped before its first checkpoint: nothing to continue from
    train(cfg.learner_recipe(learner), manifests, run, resume=resume, show_progress=False,
          split=None if resume else split_file, lung_model=lung_model, mask_cache=mask_cache)
    return "resumed" if resume else "trained"


def run_fold_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """One (learner, fold) of an ensemble as a study trial (:mod:`cxrlab.study.engine`, one Ray Tune trial):
    trains ``learners/<name>/fold<k>`` exactly as the local loop does, then writes its ``trial.json`` with the
    fold's held-out macro-F1 and accuracy. It reads only its config, so it runs on any node of a Ray cluster
    that sees the same file system."""
    from cxrlab.recipes.loader import load_recipe
    from cxrlab.study.trial import TRIAL_FILE
    from cxrlab.train.trainer import _as_manifests

    t0 = time.perf_counter()
    run_dir, k = Path(trial["ensemble_dir"]), int(trial["fold"])
    cfg = load_recipe(run_dir / "recipe.yaml", kind=KIND)
    learner = next(lr for lr in cfg.learners if lr.name == trial["learner"])
    fold_dir = Path(trial["run_dir"])
    what = _train_fold(cfg, learner, k, fold_dir, run_dir / "splits" / f"fold{k}.csv", _as_manifests(trial["data"]),
                       trial.get("lung_model"), Path(trial["mask_cache"]))
    table = pd.read_parquet(fold_dir / "predictions.parquet")
    test = table[table[SPLIT] == "test"]
    truth = pd.read_csv(run_dir / "folds.csv").set_index(schema.IMAGE)[CLASS]
    y = pd.Categorical(truth.loc[test[schema.IMAGE]], categories=cfg.classes).codes.astype(np.int64)
    probs = test[[f"prob_{c}" for c in cfg.classes]].to_numpy(np.float64)
    scores = fold_scores(y, probs, np.full(len(y), k), cfg.classes)["per_fold"][0]
    out = {"id": trial["id"], "combo": learner.name, "fold": k, "side": None, "scores": scores, "what": what,
           "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(fold_dir / TRIAL_FILE, out)
    return out


def _train_folds_on_ray(cfg: EnsembleConfig, run_dir: Path, manifests: list[Manifest], lung_model: Any,
                        cache: Path, address: str | None, num_cpus: int | None, log: Any = None) -> None:
    """Every (learner, fold) as one Ray Tune trial (local Ray, or the cluster at ``address``); resumable like a
    study: finished trials are skipped, Tune's experiment under ``RUN/ray/`` is restored after a kill."""
    from cxrlab.study.engine import run_trials

    data_dir = run_dir / "ray" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, manifest in enumerate(manifests):  # absolute paths: every trial reads the same pooled inputs
        path = data_dir / f"manifest{i}.csv"
        if not path.is_file():
            with atomic_path(path) as tmp:
                manifest.df.to_csv(tmp, index=False)
        paths.append(str(path.resolve()))
    trials = [{"id": f"{lr.name}/fold{k}", "runner": "cxrlab.train.ensemble:run_fold_trial",
               "ensemble_dir": str(run_dir.resolve()), "learner": lr.name, "fold": k, "data": paths,
               "lung_model": str(Path(lung_model).resolve()) if lung_model else None,
               "mask_cache": str(cache.resolve()),
               "run_dir": str((run_dir / "learners" / lr.name / f"fold{k}").resolve())}
              for lr in cfg.learners for k in range(cfg.folds)]
    run_trials(trials, run_dir / "ray", "learners", address=address, num_cpus=num_cpus, log=log or _log)


def _fold_predictions(cfg: EnsembleConfig, run_dir: Path, assignment: pd.DataFrame):
    from cxrlab.ensemble import FoldPredictions

    classes = cfg.classes
    preds = []
    for learner in cfg.learners:
        for k in range(cfg.folds):
            run = run_dir / "learners" / learner.name / f"fold{k}"
            table = pd.read_parquet(run / "predictions.parquet")
            test = table[table[SPLIT] == "test"]
            trained = pd.read_csv(run / "split.csv", dtype={schema.PATIENT_ID: str})
            train_patients = set(trained.loc[trained[SPLIT] != "test", schema.PATIENT_ID])
            train_folds = frozenset(assignment.loc[assignment[schema.PATIENT_ID].astype(str).isin(train_patients),
                                                   FOLD].astype(int).tolist())
            # train_folds from the model's own split.csv: assemble_oof refuses any probability of a patient in them
            preds.append(FoldPredictions(learner.name, k, test[schema.IMAGE].astype(str).tolist(),
                                         test[[f"prob_{c}" for c in classes]].to_numpy(np.float64), train_folds))
    return preds


def train_ensemble(recipe: EnsembleConfig | str | os.PathLike, data: Sequence[str | os.PathLike | Manifest],
                   out: str | os.PathLike, resume: bool = False, overrides: Sequence[str] = (),
                   lung_model: str | os.PathLike | None = None,
                   mask_cache: str | os.PathLike | None = None, engine: str = "local",
                   address: str | None = None, num_cpus: int | None = None, log: Any = None,
                   reuse: str | os.PathLike | None = None) -> Path:
    """Train every base learner on every fold, then the combiners; returns the run directory (see module doc).

    ``engine="ray"``: each (learner, fold) is one Ray Tune trial (local Ray with one CPU per trial, or the cluster
    at ``address``), as ``cxrlab study run`` does with an ensemble recipe; ``"local"``: one after another here.
    ``reuse``: an earlier ensemble run whose identical fold models are taken instead of retrained (module doc)."""
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine {engine!r}: choose local or ray")
    if reuse is not None:
        reuse = Path(reuse)
        if not (reuse / "folds.csv").is_file() or not (reuse / "learners").is_dir():
            raise InputError(reuse, "--reuse: not an ensemble run directory (no folds.csv / learners/)")
        if engine == "ray":
            raise ConfigError("--reuse with the Ray engine is not supported: reuse in a local run first")
    from cxrlab.ensemble import assemble_oof, create_combiner, cross_validate_combiner
    from cxrlab.recipes.loader import load_recipe, save_recipe
    from cxrlab.train.trainer import _as_manifests

    run_dir = Path(out)
    if resume:
        if not (run_dir / "recipe.yaml").is_file() or not is_ensemble_run(run_dir):
            raise InputError(run_dir, "nothing to resume: no ensemble recipe.yaml in this directory")
        cfg = load_recipe(run_dir / "recipe.yaml", kind=KIND)  # the run's own recipe is authoritative
    else:
        if (run_dir / "recipe.yaml").is_file():
            raise ConfigError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
        cfg = recipe if isinstance(recipe, EnsembleConfig) else load_recipe(recipe, overrides, kind=KIND)
    manifests = _as_manifests(data)
    df, report = pooled_table(cfg, manifests)
    assignment = fold_assignment(cfg, df)
    if resume:
        saved = pd.read_csv(run_dir / "folds.csv", dtype={schema.PATIENT_ID: str})
        if sorted(saved[schema.IMAGE].astype(str)) != sorted(assignment[schema.IMAGE].astype(str)):
            raise InputError(run_dir / "folds.csv", "the --data manifests do not give the images this run was "
                             "started with: resume with the same --data")
        assignment = saved
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_recipe(cfg, run_dir / "recipe.yaml")
        with atomic_path(run_dir / "folds.csv") as tmp:
            assignment.to_csv(tmp, index=False)
        atomic_write_json(run_dir / "data_filter.json", {**report, "folds": cfg.folds, "lung_run":
                                                         str(lung_model) if lung_model else None})
    cache = Path(mask_cache) if mask_cache is not None else run_dir / "lung_masks"
    if lung_model is None and resume:  # the run's own lung model, as recorded when it started
        lung_model = json.loads((run_dir / "data_filter.json").read_text()).get("lung_run")
    _log(f"{len(assignment)} images, {assignment[schema.PATIENT_ID].nunique()} patients, {cfg.folds} folds, "
         f"{len(cfg.learners)} learner(s); dropped {report['rows_dropped']} row(s) outside {cfg.classes}")
    for k in range(cfg.folds):  # one split per fold, shared by every learner
        split_file = run_dir / "splits" / f"fold{k}.csv"
        if not split_file.is_file():
            split_file.parent.mkdir(exist_ok=True)
            with atomic_path(split_file) as tmp:
                fold_split(cfg, assignment, k).to_csv(tmp, index=False)
    total, done = len(cfg.learners) * cfg.folds, 0
    if engine == "ray":
        _train_folds_on_ray(cfg, run_dir, manifests, lung_model, cache, address, num_cpus, log)
    for learner in cfg.learners if engine == "local" else []:
        for k in range(cfg.folds):
            split_file = run_dir / "splits" / f"fold{k}.csv"
            t0 = time.perf_counter()
            _log(f"[{done + 1}/{total}] learner {learner.name}, fold {k + 1}/{cfg.folds} ...")
            what = _train_fold(cfg, learner, k, run_dir / "learners" / learner.name / f"fold{k}", split_file,
                               manifests, lung_model, cache, reuse)
            done += 1
            _log(f"[{done}/{total}] learner {learner.name}, fold {k + 1}/{cfg.folds}: {what} "
                 f"({time.perf_counter() - t0:.0f} s)")
    oof = assemble_oof(assignment, _fold_predictions(cfg, run_dir, assignment), [lr.name for lr in cfg.learners])
    classes = cfg.classes
    y = pd.Categorical(assignment[CLASS], categories=classes).codes.astype(np.int64)
    long = []
    for j, name in enumerate(oof.learners):
        part = pd.DataFrame({"learner": name, schema.IMAGE: oof.images, schema.PATIENT_ID: oof.patients,
                             FOLD: oof.folds})
        for i, c in enumerate(classes):
            part[f"prob_{c}"] = oof.probs[:, j, i]
        long.append(part)
    with atomic_path(run_dir / "oof.parquet") as tmp:
        pd.concat(long, ignore_index=True).to_parquet(tmp, index=False)
    from cxrlab.versions import software_versions

    metrics: dict[str, Any] = {"learners": {}, "combiners": {}, "classes": classes, "folds": cfg.folds,
                               "images": int(len(y)), "combiner": cfg.combiner.name,
                               "software": software_versions(), "seed": cfg.seed}
    for j, name in enumerate(oof.learners):
        metrics["learners"][name] = fold_scores(y, oof.probs[:, j], oof.folds, classes)
    combined = []
    (run_dir / "combiners").mkdir(exist_ok=True)
    for spec in [cfg.combiner, *cfg.baselines]:
        _log(f"combiner {spec.name}: out-of-fold evaluation and fit")
        probs = cross_validate_combiner(spec.name, oof, y, **spec.options)
        metrics["combiners"][spec.name] = fold_scores(y, probs, oof.folds, classes)
        part = pd.DataFrame({"combiner": spec.name, schema.IMAGE: oof.images, FOLD: oof.folds})
        for i, c in enumerate(classes):
            part[f"prob_{c}"] = probs[:, i]
        combined.append(part)
        fitted = create_combiner(spec.name, **spec.options).fit(oof.probs, y)
        with atomic_path(run_dir / "combiners" / f"{spec.name}.pkl") as tmp:
            tmp.write_bytes(pickle.dumps(fitted))
    table = pd.concat(combined, ignore_index=True)
    with atomic_path(run_dir / "combiner_predictions.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    _write_predictions(cfg, run_dir, df, assignment, table[table["combiner"] == cfg.combiner.name])
    atomic_write_json(run_dir / "model.json", {"kind": KIND, "tasks": [_task_config(cfg)],
                                               "learners": [lr.name for lr in cfg.learners],
                                               "combiner": cfg.combiner.name, "folds": cfg.folds})
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / FINISHED, json.dumps({"finished": True, "combiner": cfg.combiner.name}) + "\n")
    best = metrics["combiners"][cfg.combiner.name]["mean"]
    _log(f"done: {cfg.combiner.name} macro-F1 {best['macro_f1']:.3f} (mean over {cfg.folds} folds)")
    return run_dir


def _task_config(cfg: EnsembleConfig) -> dict[str, Any]:
    from cxrlab.tasks import TaskSet

    return TaskSet.from_config([cfg.task]).tasks[0].config()


def _write_predictions(cfg: EnsembleConfig, run_dir: Path, df: pd.DataFrame, assignment: pd.DataFrame,
                       probs: pd.DataFrame) -> None:
    """``predictions.parquet`` like a training run's: every image is a ``test`` row (out-of-fold)."""
    task = _task_config(cfg)
    pred = pd.DataFrame({schema.IMAGE: assignment[schema.IMAGE].astype(str).to_numpy(),
                         schema.PATIENT_ID: assignment[schema.PATIENT_ID].astype(str).to_numpy(), SPLIT: "test",
                         FOLD: assignment[FOLD].to_numpy()})
    by_image = df.set_index(df[schema.IMAGE].astype(str))
    for c in (schema.SOURCE_DATASET, schema.VIEW, task["column"]):
        if c in by_image.columns:
            pred[c] = by_image.loc[pred[schema.IMAGE], c].to_numpy()
    probs = probs.set_index(probs[schema.IMAGE].astype(str)).loc[pred[schema.IMAGE]]
    for c in cfg.classes:
        pred[f"prob_{c}"] = probs[f"prob_{c}"].to_numpy()
    p = pred[[f"prob_{c}" for c in cfg.classes]].to_numpy()
    pred[f"pred_{task['name']}"] = np.array(cfg.classes, dtype=object)[p.argmax(1)]
    with atomic_path(run_dir / "predictions.parquet") as tmp:
        pred.to_parquet(tmp, index=False)


# --- prediction -----------------------------------------------------------------------------------------------

class EnsembleModel:
    """A finished ensemble run: every learner's fold models and the fitted combiner (``predict`` like
    :class:`cxrlab.train.RunModel`)."""

    def __init__(self, run_dir: Path, cfg: EnsembleConfig, models: dict[str, list[Any]], combiner: Any):
        self.run_dir, self.cfg, self.models, self.combiner = run_dir, cfg, models, combiner
        self.lung_masks_report: dict[str, Any] | None = None

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "EnsembleModel":
        from cxrlab.recipes.loader import load_recipe
        from cxrlab.train.predict import load_run

        run_dir = Path(run_dir)
        if not is_ensemble_run(run_dir):
            raise InputError(run_dir, "not an ensemble run directory (no recipe.yaml of kind ensemble)")
        if not (run_dir / FINISHED).is_file():
            raise InputError(run_dir, "not a finished ensemble run (no ensemble.json): continue it with "
                             "`cxrlab train ... --out RUN --resume`")
        cfg = load_recipe(run_dir / "recipe.yaml", kind=KIND)
        path = run_dir / "combiners" / f"{cfg.combiner.name}.pkl"
        try:
            combiner = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise InputError(path, f"cannot read the fitted combiner: {exc}") from None
        models = {lr.name: [load_run(run_dir / "learners" / lr.name / f"fold{k}") for k in range(cfg.folds)]
                  for lr in cfg.learners}
        return cls(run_dir, cfg, models, combiner)

    @property
    def tasks(self):
        return next(iter(self.models.values()))[0].tasks

    def learner_probabilities(self, df: pd.DataFrame, lung_model=None, mask_cache=None, **kwargs
                              ) -> tuple[pd.DataFrame, np.ndarray]:
        """The first fold model's table (image, targets, quality columns) and ``(N, L, C)``: each learner's
        probability, the mean over its fold models."""
        columns = [f"prob_{c}" for c in self.cfg.classes]
        first, per_learner = None, []
        for name, fold_models in self.models.items():
            probs = []
            for model in fold_models:
                table = model.predict(df, lung_model=lung_model, mask_cache=mask_cache, **kwargs)
                if first is None:
                    first = table
                    self.lung_masks_report = model.lung_masks_report
                probs.append(table[columns].to_numpy(np.float64))
            per_learner.append(np.mean(probs, axis=0))
        return first, np.stack(per_learner, axis=1)

    def sample_probabilities(self, samples: Sequence[dict]) -> np.ndarray:
        """``(N, L, C)`` for in-memory samples (image + lung masks, as the service holds them): each learner's
        probability, the mean over its fold models."""
        columns = [f"prob_{c}" for c in self.cfg.classes]
        per_learner = []
        for fold_models in self.models.values():
            folds = [model.predict_samples(samples) for model in fold_models]
            per_learner.append(np.mean([np.column_stack([np.asarray(d[c], np.float64) for c in columns])
                                        for d in folds], axis=0))
        return np.stack(per_learner, axis=1)

    def combine(self, probs: np.ndarray) -> np.ndarray:
        """``(N, C)``: the fitted combiner applied to the learners' ``(N, L, C)`` probabilities."""
        return np.asarray(self.combiner.predict(probs), dtype=np.float64)

    def predict(self, data: Any, lung_model: str | os.PathLike | None = None, quality: Any | None = None,
                keep_failing: bool = False, batch_size: int = 32,
                mask_cache: str | os.PathLike | None = None) -> pd.DataFrame:
        from cxrlab.train.predict import _as_frame

        df = _as_frame(data).reset_index(drop=True)
        kwargs: dict[str, Any] = {"batch_size": batch_size}
        if quality is not None:
            from cxrlab.quality.batch import as_gate

            kwargs.update(quality=as_gate(quality), keep_failing=keep_failing)
        first, probs = self.learner_probabilities(df, lung_model, mask_cache, **kwargs)
        prob_cols = [f"prob_{c}" for c in self.cfg.classes]
        out = first.drop(columns=[c for c in first.columns if c.startswith(("prob_", "pred_"))])
        ok = np.isfinite(probs).all(axis=(1, 2))  # images the quality gate refused have no probabilities
        combined = np.full((len(df), len(prob_cols)), np.nan)
        if ok.any():
            combined[ok] = self.combine(probs[ok])
        for i, c in enumerate(prob_cols):
            out[c] = combined[:, i]
        task = _task_config(self.cfg)
        labels = np.array(self.cfg.classes, dtype=object)[np.nan_to_num(combined).argmax(1)]
        out[f"pred_{task['name']}"] = np.where(ok, labels, None)
        for j, name in enumerate(self.models):
            for i, c in enumerate(self.cfg.classes):
                out[f"{name}.prob_{c}"] = probs[:, j, i]
        return out


def load_ensemble(run_dir: str | os.PathLike) -> EnsembleModel:
    return EnsembleModel.load(run_dir)
