"""One study trial: cxrlab's ordinary training of one (combination, fold, side) into its own run directory,
then its scores on the run's test part (``trial.json``, written atomically; a finished trial is never retrained).

This is the function every Ray Tune trial runs; it only reads its config, so it runs the same in a local
process pool or on a Ray cluster node that sees the same file system.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.evaluate.ordinal import ordinal_scores
from cxrlab.utils import atomic_write_json

TRIAL_FILE = "trial.json"
HCS_BATCH_IMAGES = 2  # images per Grad-CAM batch in a trial's HCS (two inputs each with a per-lung ROI)


def trial_done(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / TRIAL_FILE).is_file()


def read_trial(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / TRIAL_FILE).read_text())


def side_overrides(recipe_name: str, overrides: list[str], side: str | None) -> list[str]:
    """Recipe overrides that make the model independent for ``side``: with a per-lung ROI the lung's inputs
    only (``train.side``); with one input per image the opacity task graded on that side only (one head)."""
    if side is None:
        return []
    from cxrlab.recipes.loader import load_recipe
    from cxrlab.train.inputs import InputPipeline

    recipe = load_recipe(recipe_name, overrides)
    if InputPipeline(recipe.input).per_image == 2:
        return [f"train.side={side}"]
    tasks = [dict(t) for t in recipe.tasks]
    tasks[0]["sides"] = [side]
    return [f"tasks={json.dumps(tasks)}"]


def test_predictions(run_dir: Path, column: str) -> pd.DataFrame:
    """The run's test rows: patient, truth and predicted grade of ``column`` (e.g. ``opacity_right``)."""
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    test = pred[(pred["split"] == "test") & pred[column].notna()]
    keep = [c for c in ("image", "patient_id", "source_dataset", "view", column, f"pred_{column}") if c in test]
    return test[keep + [c for c in test.columns if c.startswith(f"prob_{column}_")]].reset_index(drop=True)


def score_grades(y: np.ndarray, pred: np.ndarray, n_grades: int) -> dict[str, float]:
    if not len(y):
        return {"n": 0}
    return {"n": int(len(y)), **ordinal_scores(y.astype(int), pred.astype(int), n_grades)}


def macro_mae_by_decision(df: pd.DataFrame, column: str, n_grades: int) -> dict[str, float]:
    """Macro-MAE of the rows' grade probabilities (``prob_<column>_<g>``) read by each decision rule
    (``macro_mae_mode``, ``macro_mae_median``): what the choice of rule alone changes; {} without them."""
    from cxrlab.evaluate.ordinal import macro_mae
    from cxrlab.tasks.ordinal import DECISIONS, decide

    cols = [f"prob_{column}_{g}" for g in range(n_grades)]
    if not len(df) or not set(cols) <= set(df.columns):
        return {}
    probs, y = df[cols].to_numpy(dtype=float), df[column].to_numpy().astype(int)
    return {f"macro_mae_{d}": macro_mae(y, decide(probs, d)) for d in DECISIONS}


def pooled_macro_mae_ci(df: pd.DataFrame, column: str, n_grades: int, seed: int = 0) -> list[float] | None:
    """Patient-bootstrap 95 % interval of the pooled out-of-fold macro-MAE (``pred_<column>``), or None."""
    from cxrlab.evaluate.ordinal import ordinal_metrics

    if not len(df):
        return None
    est = ordinal_metrics(df[column].to_numpy().astype(int), df[f"pred_{column}"].to_numpy().astype(int), n_grades,
                          patient_ids=df["patient_id"].to_numpy(), seed=seed)["metrics"]["macro_mae"]
    return [float(est["low"]), float(est["high"])]


def trial_hcs(run_dir: Path, test: pd.DataFrame, manifest: pd.DataFrame, column: str, side: str | None,
              n_images: int, definition: str, lung_model: str | None, seed: int) -> dict[str, Any]:
    """Macro-averaged HCS (mean over true grades of the mean per-image HCS) of the side's head on at most
    ``n_images`` test images (seeded draw); lungs from the manifest's masks or the lung run."""
    if n_images <= 0 or not len(test):
        return {"ma_hcs": float("nan"), "hcs_images": 0}
    from cxrlab.explain.hcs import macro_hcs
    from cxrlab.explain.run import explain_rows, load_explain_model

    em = load_explain_model(run_dir, lung_model=lung_model)
    heads = list(em.heads())
    per_side = em.pipeline.per_image == 2
    head = "opacity" if per_side else next((h for h in heads if h.endswith(column)), f"opacity:{column}")
    pick = test.sample(n=min(n_images, len(test)), random_state=seed) if len(test) > n_images else test
    rows = manifest.set_index("image").loc[pick["image"]].reset_index().to_dict("records")
    # Grad-CAM keeps every layer's activations for its backward pass: a few images at a time keep a trial's
    # memory small enough for two trials side by side (16 images, 32 per-lung inputs of 256 px
    # EfficientNet-Lite2, took ~6 GB and one of two trials was killed for memory on a 24 GB machine)
    res = explain_rows(em, rows, head, with_overlay=False, hcs_definition=definition, batch_size=HCS_BATCH_IMAGES)
    idx = 0 if side in (None, "right") else 1
    values = [r["hcs_per_input"][idx] if per_side else r["hcs"] for r in res]
    summary = macro_hcs(values, pick[column].astype(int).tolist())
    return {"ma_hcs": summary["macro"], "hcs_per_grade": summary["per_class"], "hcs_images": int(len(values)),
            "hcs_definition": definition}


def run_trial(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the trial in ``cfg["run_dir"]`` and score it; returns the scores.

    ``cfg``: id, combo, fold, side, recipe, overrides, run_dir, split, data (manifest paths), lung_model,
    mask_cache, column, n_grades, hcs_images, hcs, seed."""
    run_dir = Path(cfg["run_dir"])
    if trial_done(run_dir):
        return read_trial(run_dir)
    import torch

    from cxrlab.train import train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if not (run_dir / "metrics.json").is_file():
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        train(cfg["recipe"], cfg["data"], run_dir, resume=resume, overrides=cfg["overrides"], show_progress=False,
              split=None if resume else cfg["split"], lung_model=cfg.get("lung_model"),
              mask_cache=cfg.get("mask_cache"))
    column = cfg["column"]
    test = test_predictions(run_dir, column)
    scores = score_grades(test[column].to_numpy(), test[f"pred_{column}"].to_numpy(), cfg["n_grades"])
    from cxrlab.data.manifest import load_manifest

    manifest = pd.concat([load_manifest(p).df for p in cfg["data"]], ignore_index=True)
    scores.update(trial_hcs(run_dir, test, manifest, column, cfg.get("side"), cfg["hcs_images"], cfg["hcs"],
                            cfg.get("lung_model"), cfg.get("seed", 0)))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {"id": cfg["id"], "combo": cfg["combo"], "fold": cfg["fold"], "side": cfg.get("side"),
           "scores": scores, "epochs": metrics.get("run", {}).get("epochs"),
           "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(run_dir / TRIAL_FILE, _finite(out))
    return out


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
