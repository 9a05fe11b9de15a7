"""``train_severity(config) -> run_dir``: Stage II training on disease masks, then the scoring fit.

1. Training table: rows with a ``mask_disease`` file, plus disease-free rows (``disease_free_findings``) with an
   empty mask written under ``<run>/empty_masks/`` so the model also learns "nothing here"; rows without
   a mask and not known to be clear (e.g. never-annotated pneumonia) are left out.
2. Sampling: ``balanced`` writes a ``sampling_group`` column (``<source>|disease`` or ``<source>|clear``) into
   the derived training manifest and makes it the anatomy trainer's ``group_column``, so its balanced draw
   gives both groups equal weight in every epoch (and its patient-level split stratifies by them);
   ``source_dataset`` stays the true source. ``group_column`` balances on any other manifest column instead.
   The loss is the anatomy trainer's ``disease.loss`` (default: per-image Dice + BCE, whose smoothed Dice is
   zero for an empty prediction on an empty mask, so clear images are learnable).
3. ``cxrlab.anatomy.train_segmentation`` trains the disease model (any of the nine smp decoders, input
   ``image`` or ``image+lung``) into ``<run>/disease``; its patient-level ``split.csv`` is the split of
   everything below.
4. The zone threshold is fitted on the validation split, the Brixia cut-points on Brixia-scored training
   images (the training split, or the train part of a patient-level split of ``brixia.manifests``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from cxrlab.anatomy.config import load_config
from cxrlab.anatomy.default_output import SHARED
from cxrlab.anatomy.threshold import THRESHOLD_FILE, write_run_threshold
from cxrlab.anatomy.train import train_segmentation
from cxrlab.data import schema
from cxrlab.data.manifest import Manifest, load_manifest, save_manifest
from cxrlab.data.splits import assert_patient_disjoint, load_split, save_split, split_patients
from cxrlab.errors import ConfigError, InputError
from cxrlab.io import image_size, read_mask, write_png
from cxrlab.severity.config import SeverityConfig, load_severity_config
from cxrlab.severity.fitting import brixia_columns, fit_disease_threshold, fit_scoring
from cxrlab.severity.pipeline import PIPELINE_FILE, SCORING_FILE, SeverityPipeline
from cxrlab.utils import atomic_write_json, atomic_write_text, remove_stale_temps, seed_everything

Progress = Callable[[str, int, int, str], None]
GROUP_SEPARATOR = "|"
SAMPLING_GROUP = "sampling_group"  # the derived manifest's default group column: "<source>|disease|clear"


def _has(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def load_rows(manifests: list[str]) -> pd.DataFrame:
    if not manifests:
        raise ConfigError("severity config: 'manifests' is empty")
    frames = [load_manifest(p).df for p in manifests]
    return pd.concat(frames, ignore_index=True, sort=False)


def training_table(cfg: SeverityConfig, run_dir: Path, progress: Progress) -> pd.DataFrame:
    """Rows Stage II can learn from, with a mask for each (empty for disease-free rows) and a sampling group."""
    df = load_rows(cfg.manifests)
    if schema.MASK_DISEASE not in df:
        df[schema.MASK_DISEASE] = None
    has_mask = df[schema.MASK_DISEASE].map(_has)
    clear = ~has_mask & df.get(schema.FINDING, pd.Series(None, index=df.index)).isin(cfg.disease_free_findings)
    df = df[has_mask | clear].reset_index(drop=True)
    if df.empty:
        raise InputError(", ".join(cfg.manifests), f"no row has a {schema.MASK_DISEASE} or a disease-free finding "
                         f"({cfg.disease_free_findings})")
    diseased = np.zeros(len(df), bool)
    for i, row in df.iterrows():
        if _has(row[schema.MASK_DISEASE]):
            diseased[i] = read_mask(row[schema.MASK_DISEASE]).any()
        else:
            path = run_dir / "empty_masks" / f"{i:06d}_{Path(str(row[schema.IMAGE])).stem}.png"
            write_png(path, np.zeros(image_size(row[schema.IMAGE]), np.uint8), mask=True)
            df.at[i, schema.MASK_DISEASE] = str(path)
        progress("masks", i + 1, len(df), "checking disease masks")
    df["has_disease"] = diseased.astype(int)
    df[SAMPLING_GROUP] = [f"{s}{GROUP_SEPARATOR}{'disease' if d else 'clear'}"
                          for s, d in zip(df[schema.SOURCE_DATASET].astype(str), diseased)]
    return df


def sampling_column(cfg: SeverityConfig) -> str | None:
    """The disease run's ``group_column``: the config's own, else the disease/clear groups when balanced."""
    if cfg.group_column:
        return cfg.group_column
    return SAMPLING_GROUP if cfg.sampling == "balanced" else None


def disease_config(cfg: SeverityConfig, manifest: Path, run_dir: Path, n_rows: int) -> dict[str, Any]:
    base: dict[str, Any] = {"name": f"{cfg.name}-disease", "input": "image+lung", "encoder": "efficientnet_lite0",
                            "seed": cfg.seed, "split": {"seed": cfg.seed}}
    data = {**base, **cfg.disease}
    data.update(targets=[schema.MASK_DISEASE], manifests=[str(manifest)], out=str(run_dir / "disease"),
                group_column=sampling_column(cfg))
    if cfg.sampling == "balanced" and data.get("samples_per_epoch") is None:
        split = data.get("split", {})
        share = 1.0 - split.get("val_fraction", 0.15) - split.get("test_fraction", 0.15)
        data["samples_per_epoch"] = max(1, int(round(n_rows * share)))
    return data


def brixia_rows(cfg: SeverityConfig, train_df: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Brixia-scored rows the cut-points may be fitted on (training patients only)."""
    cols = brixia_columns(cfg.brixia.columns_prefix)
    if not cfg.brixia.manifests:
        return train_df.dropna(subset=cols) if all(c in train_df for c in cols) else train_df.iloc[0:0]
    df = load_rows(cfg.brixia.manifests)
    missing = [c for c in cols if c not in df]
    if missing:
        raise InputError(", ".join(cfg.brixia.manifests), f"no Brixia columns {missing}")
    df = df.dropna(subset=cols).reset_index(drop=True)
    t = cfg.brixia.test_fraction
    df["split"] = split_patients(df, (1 - t, t), seed=cfg.brixia.seed).to_numpy() if t > 0 else "train"
    save_split(df, run_dir / "brixia_split.csv")
    return df[df["split"] == "train"]


def train_severity(config: SeverityConfig | dict | str | Path, overrides: list[str] | None = None,
                   resume: bool = False, fit: bool = True, progress: Progress | None = None) -> Path:
    """Train Stage II, fit the scoring parameters, write a severity run directory; returns its path.

    ``resume``: continue an interrupted run (a finished Stage II run is kept as is). ``fit=False`` stops after
    Stage II (e.g. while the lung run is still training); a later ``resume=True`` call does the fit.
    """
    cfg = load_severity_config(config, overrides)
    report = progress or (lambda *a: None)
    run_dir = Path(cfg.out)
    if (run_dir / "recipe.yaml").exists() and not resume:
        raise ConfigError(f"{run_dir} already holds a severity run; choose another out (or resume)")
    if resume and not (run_dir / "recipe.yaml").exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no recipe.yaml); run without --resume to start it")
    if resume:
        def fixed(c: SeverityConfig) -> dict[str, Any]:
            data = c.model_dump(exclude={"lung_run"})
            data["disease"] = {k: v for k, v in data["disease"].items() if k != "epochs"}
            return data

        if fixed(load_severity_config(run_dir / "recipe.yaml")) != fixed(cfg):
            raise ConfigError(f"{run_dir}: resume needs the run's own config (only lung_run and disease.epochs "
                              "may change)")
        remove_stale_temps(run_dir)  # what a kill mid-write left; the files they were to replace are intact
    seed_everything(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", "# cxrlab severity run; resolved config\n"
                      + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    manifest_path = run_dir / "disease_manifest.csv"
    disease_run = run_dir / "disease"
    if not (resume and manifest_path.exists()):
        save_manifest(Manifest(training_table(cfg, run_dir, report)), manifest_path)
    table = load_manifest(manifest_path).df  # as saved, also on a fresh run: a resumed run fits on the same table
    if not (resume and (disease_run / "metrics.json").exists()):
        seg_cfg = load_config(disease_config(cfg, manifest_path, run_dir, len(table)))
        train_segmentation(seg_cfg, resume=resume and (disease_run / "checkpoints" / "last.pt").exists(),
                           progress=report)
    if fit:
        fit_run(cfg, run_dir, table, report)
    return run_dir


def fit_run(cfg: SeverityConfig, run_dir: Path, table: pd.DataFrame, report: Progress) -> None:
    """Fit the scoring parameters on the Stage II run's split; write ``scoring.json`` and ``severity.json``."""
    lung_run = Path(cfg.lung_run)
    if not (lung_run / "recipe.yaml").exists():
        raise InputError(lung_run, "lung_run is not a segmentation run directory (no recipe.yaml)")
    disease_run = run_dir / "disease"
    split = load_split(disease_run / "split.csv")
    table = table.copy()
    table["split"] = table[schema.IMAGE].map(dict(zip(split[schema.IMAGE], split["split"])))
    assert_patient_disjoint(table.dropna(subset=["split"]))
    if cfg.fit_disease_threshold:
        (disease_run / THRESHOLD_FILE).unlink(missing_ok=True)  # a refit starts from the recipe's cut
    pipe = SeverityPipeline.from_runs(lung_run, disease_run)
    val = table[table["split"] == "val"]
    no_val = val.empty
    if no_val:
        val = table[table["split"] == "train"]  # tiny data: fit on training images and say so in fitted_on
    threshold = None
    if cfg.fit_disease_threshold:
        threshold = fit_disease_threshold(
            pipe, val, on_batch=lambda i, n: report("fit", i, n, "fitting the disease threshold"))
        if no_val:
            threshold["fitted_on"]["split"] = "train (no validation images)"
        write_run_threshold(disease_run, threshold["threshold"], {k: v for k, v in threshold.items()
                                                                  if k != "threshold"})
        pipe = SeverityPipeline.from_runs(lung_run, disease_run)  # the zone threshold is fitted on these masks
    scoring = fit_scoring(pipe, val, brixia_rows(cfg, table[table["split"] == "train"], run_dir),
                          zone_strategy=cfg.zone_strategy, zone_reference=cfg.zone_reference,
                          brixia_prefix=cfg.brixia.columns_prefix,
                          on_batch=lambda i, n: report("fit", i, n, "fitting scoring parameters"))
    if threshold is not None:
        scoring.fitted_on["disease_threshold"] = {"threshold": threshold["threshold"],
                                                  "file": f"disease/{THRESHOLD_FILE}"}
    if no_val:
        scoring.fitted_on["warning"] = "no validation images: zone threshold fitted on training images"
    scoring.save(run_dir / SCORING_FILE)
    # the lung output the scoring was fitted with: the run keeps it even if the lung run's default changes later
    atomic_write_json(run_dir / PIPELINE_FILE, {"lung_run": str(lung_run.resolve()), "disease_run": "disease",
                                                "lung_output": pipe.lung.convention or SHARED})
