"""The two-stage severity pipeline: lungs (Stage I) → disease inside the lungs (Stage II) → zone scores.

>>> pipe = SeverityPipeline.from_runs("runs/lung_bench", "runs/severity/covid-scoring/disease")
>>> result = pipe.predict(image)            # float32 H×W in [0, 1]
>>> result.record["brixia_global"], result.masks["disease_mask"].shape == image.shape
>>> table = pipe.predict_manifest(manifest, out_dir="runs/severity/predict")   # one row per image
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from cxrlab.anatomy import geometry
from cxrlab.anatomy.default_output import RUN_DEFAULT, SHARED
from cxrlab.anatomy.predict import LungSegmenter
from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.errors import ConfigError, CxrlabError, InputError
from cxrlab.io import read_image, read_mask, write_png
from cxrlab.severity.config import ScoringParams
from cxrlab.severity.engine import PRECISION_BACKENDS, resolve_backend, stage_segmenter
from cxrlab.severity.overlay import render_overlay, write_overlay
from cxrlab.severity.scores import discard_outside_lungs, score_masks
from cxrlab.utils import atomic_path, atomic_write_json

PIPELINE_FILE = "severity.json"
SCORING_FILE = "scoring.json"
MASK_KEYS = (schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK, schema.KEY_DISEASE_MASK)


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and np.isnan(v) else v


@dataclass
class SeverityResult:
    """One image's masks (uint8, image size; disease already restricted to the lungs), zones and scores."""

    masks: dict[str, np.ndarray]
    zones: dict[str, np.ndarray]
    record: dict[str, float]
    scoring: ScoringParams
    source: str = "image"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON record: every score (NaN → null), the scoring parameters and provenance."""
        return {
            "image": self.source,
            "scores": {k: _json_value(v) for k, v in self.record.items()},
            "scoring": self.scoring.model_dump(mode="json", exclude={"fitted_on"}),
            **self.meta,
        }

    def overlay(self, image: np.ndarray, truth_disease: np.ndarray | None = None) -> np.ndarray:
        m = self.masks
        return render_overlay(image, m[schema.KEY_RIGHT_MASK], m[schema.KEY_LEFT_MASK], m[schema.KEY_DISEASE_MASK],
                              self.zones, self.record, truth_disease=truth_disease)

    def save(self, out_dir: str | Path, stem: str, image: np.ndarray | None = None,
             truth_disease: np.ndarray | None = None) -> dict[str, str]:
        """Write ``<stem>.json``, ``masks/<kind>/<stem>.png`` and, given the image, ``overlays/<stem>.png`` (with
        the reference disease outline when ``truth_disease`` is given)."""
        out_dir = Path(out_dir)
        paths = {}
        for key in MASK_KEYS:
            p = out_dir / "masks" / key.removesuffix("_mask") / f"{stem}.png"
            write_png(p, self.masks[key], mask=True)
            paths[f"mask_{key.removesuffix('_mask')}"] = str(p)
        if image is not None:
            p = out_dir / "overlays" / f"{stem}.png"
            write_overlay(p, self.overlay(image, truth_disease))
            paths["overlay"] = str(p)
        p = out_dir / "records" / f"{stem}.json"
        atomic_write_json(p, {**self.to_json(), "files": paths})
        paths["record"] = str(p)
        return paths


def _truth_disease(row: pd.Series, shape: tuple[int, ...]) -> np.ndarray | None:
    """The row's reference disease mask (``mask_disease``) when it has one of the image's size, else None."""
    path = row.get(schema.MASK_DISEASE)
    if not isinstance(path, str) or not path.strip():
        return None
    try:
        mask = read_mask(path)
    except CxrlabError:
        return None  # an unreadable reference must not stop the scoring of the image
    return mask if mask.shape == tuple(shape) else None


class SeverityPipeline:
    """Stage I (an anatomy lung run) + Stage II (a disease segmentation run) + scoring parameters.

    ``backend`` is the inference engine of both networks (:mod:`cxrlab.severity.engine`): ``auto``,
    ``torch-fp32``, ``torch-bf16`` or ``onnxruntime``; None follows the segmenters' precision.
    """

    def __init__(self, lung: LungSegmenter, disease: LungSegmenter, scoring: ScoringParams | None = None,
                 provenance: dict[str, str] | None = None, backend: str | None = None):
        if not lung.config.is_lung_model:
            raise ConfigError(f"Stage I run {lung.run_dir} is not a lung model (targets {lung.config.targets})")
        if schema.MASK_DISEASE not in disease.config.targets:
            raise ConfigError(f"Stage II run {disease.run_dir} does not predict {schema.MASK_DISEASE} "
                              f"(targets {disease.config.targets})")
        self.lung, self.disease = lung, disease
        self.scoring = scoring or ScoringParams()
        self.provenance = provenance or {}
        self.backend = resolve_backend(backend or PRECISION_BACKENDS.get(disease.precision, "auto"))
        self._stages = (stage_segmenter(lung, self.backend), stage_segmenter(disease, self.backend))

    @classmethod
    def from_runs(cls, lung_run: str | Path, disease_run: str | Path,
                  scoring: ScoringParams | str | Path | None = None, precision: str = "auto",
                  backend: str | None = None, lung_output: str = RUN_DEFAULT) -> "SeverityPipeline":
        """Load both runs; ``scoring`` a ScoringParams, a ``scoring.json`` path, or None (defaults).
        ``backend`` (default: the one computing ``precision``) runs both networks. ``lung_output``: Stage I's
        lung output (a convention name, ``shared``; default: the lung run's default output)."""
        if scoring is not None and not isinstance(scoring, ScoringParams):
            scoring = ScoringParams.load(scoring)
        if precision not in PRECISION_BACKENDS:
            raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISION_BACKENDS)}")
        return cls(LungSegmenter.from_run(lung_run, precision=precision, convention=lung_output),
                   LungSegmenter.from_run(disease_run, precision=precision), scoring,
                   {"lung_run": str(lung_run), "disease_run": str(disease_run)},
                   backend or PRECISION_BACKENDS[precision])

    @classmethod
    def from_run(cls, run_dir: str | Path, precision: str = "auto", backend: str | None = None
                 ) -> "SeverityPipeline":
        """A severity run directory (``severity.json`` + ``scoring.json``, written by ``train_severity``)."""
        run_dir = Path(run_dir)
        spec = run_dir / PIPELINE_FILE
        if not spec.exists():
            raise InputError(run_dir, f"not a severity run directory (no {PIPELINE_FILE})")
        paths = json.loads(spec.read_text())
        lung, disease = (Path(paths[k]) for k in ("lung_run", "disease_run"))
        lung = lung if lung.is_absolute() else run_dir / lung
        disease = disease if disease.is_absolute() else run_dir / disease
        # a run fitted before outputs were recorded used the shared lung channels
        return cls.from_runs(lung, disease, run_dir / SCORING_FILE, precision, backend,
                             lung_output=paths.get("lung_output", SHARED))

    def with_scoring(self, scoring: ScoringParams) -> "SeverityPipeline":
        """The same networks and engines (not rebuilt) with other scoring parameters."""
        other = copy.copy(self)
        other.scoring = scoring
        return other

    # --- inference --------------------------------------------------------------------------------------------
    def segment_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Both stages, each on the whole batch at its training size; masks at each image's size. Stage II sees
        the predicted lungs when it takes them."""
        lung_stage, disease_stage = self._stages
        lungs = lung_stage.predict_batch(list(images), batch_size=len(images) or 1)
        lung_inputs = [m[schema.KEY_LUNG_MASK] for m in lungs] if disease_stage.in_channels == 2 else None
        disease = disease_stage.predict_batch(list(images), lung_inputs, batch_size=len(images) or 1)
        return [{schema.KEY_RIGHT_MASK: lm[schema.KEY_RIGHT_MASK], schema.KEY_LEFT_MASK: lm[schema.KEY_LEFT_MASK],
                 schema.KEY_DISEASE_MASK: dm[schema.KEY_DISEASE_MASK]} for lm, dm in zip(lungs, disease)]

    def score(self, masks: dict[str, np.ndarray], source: str = "image",
              image_shape: tuple[int, ...] | None = None) -> SeverityResult:
        """Scores from masks (predicted or given): discards disease outside the lungs, zones, every score."""
        s = self.scoring
        r, l, d = (np.asarray(masks[k]) for k in MASK_KEYS)
        if r.shape != l.shape:
            raise InputError(source, f"lung masks differ in size: right {r.shape}, left {l.shape}")
        zones = geometry.lung_zones(r, l, s.zone_strategy)
        record = score_masks(d, r, l, zones, zone_threshold=s.zone_threshold, brixia_cutpoints=s.brixia_cutpoints,
                             image_shape=image_shape, source=source)
        inside = discard_outside_lungs(d, r, l).astype(np.uint8)
        return SeverityResult({schema.KEY_RIGHT_MASK: r, schema.KEY_LEFT_MASK: l, schema.KEY_DISEASE_MASK: inside},
                              zones, record, s, source)

    def predict_batch(self, images: Sequence[np.ndarray], sources: Sequence[str] | None = None
                      ) -> list[SeverityResult]:
        sources = list(sources) if sources is not None else [f"image {i}" for i in range(len(images))]
        return [self.score(m, src, np.shape(im)) for m, src, im in zip(self.segment_batch(images), sources, images)]

    def predict(self, image: np.ndarray, source: str = "image") -> SeverityResult:
        """One float32 H×W image in [0, 1] → masks, zones and every score."""
        return self.predict_batch([image], [source])[0]

    def predict_path(self, path: str | Path) -> tuple[SeverityResult, np.ndarray]:
        image, _ = read_image(path)
        return self.predict(image, str(path)), image

    def predict_manifest(
        self,
        manifest: Manifest | pd.DataFrame,
        out_dir: str | Path | None = None,
        *,
        overlays: bool = False,
        save_masks: bool = False,
        batch_size: int = 8,
        on_batch: Callable[[int, int], None] | None = None,
        quality: Any | None = None,
        keep_failing: bool = False,
    ) -> pd.DataFrame:
        """Score every image of a manifest → one table (``image, patient_id, pred_<score>..., error``).

        An image that cannot be scored (unreadable, no lung found) gets its reason in ``error`` and NaN scores,
        so one bad file does not stop a batch. With ``out_dir`` the table is written as ``predictions.csv``
        (plus per-image records, masks and overlays when asked). ``quality`` (a gate or its run directory) adds
        the ``quality_*`` columns: refused images (lateral, not a chest film) are not scored unless
        ``keep_failing``, inverted ones are corrected first.
        """
        df = (manifest.df if isinstance(manifest, Manifest) else manifest).reset_index(drop=True)
        checks, inverted = None, None
        if quality is not None:
            from cxrlab.quality.batch import as_gate, check_frame, inverted_rows

            checks = check_frame(as_gate(quality), df, batch_size)
            inverted = inverted_rows(checks)
        rows: list[dict[str, Any]] = []
        n = len(df)
        for start in range(0, n, batch_size):
            chunk = df.iloc[start:start + batch_size]
            images, keep = [], []
            for i, row in chunk.iterrows():
                base = {schema.IMAGE: row[schema.IMAGE], schema.PATIENT_ID: row.get(schema.PATIENT_ID), "_row": i}
                if checks is not None:
                    base.update(checks.loc[i].to_dict())
                    if checks.at[i, "quality_verdict"] == "refuse" and not keep_failing:
                        reasons = checks.at[i, "quality_reasons"]
                        rows.append({**base, "error": f"refused by the quality gate: {reasons}"})
                        continue
                try:
                    image = read_image(row[schema.IMAGE])[0]
                    images.append(1.0 - image if inverted is not None and inverted[i] else image)
                    keep.append(base)
                except CxrlabError as exc:
                    rows.append({**base, "error": str(exc)})
            for base, image, masks in zip(keep, images, self.segment_batch(images) if images else []):
                try:
                    res = self.score(masks, str(base[schema.IMAGE]), image.shape)
                except CxrlabError as exc:
                    rows.append({**base, "error": str(exc)})
                    continue
                row_out = {**base, **{f"pred_{k}": v for k, v in res.record.items()}, "error": None}
                if out_dir is not None and (overlays or save_masks):
                    stem = Path(str(base[schema.IMAGE])).stem
                    truth = _truth_disease(df.loc[base["_row"]], image.shape) if overlays else None
                    res.save(out_dir, stem, image if overlays else None, truth)
                rows.append(row_out)
            if on_batch:
                on_batch(min(start + batch_size, n), n)
        table = pd.DataFrame(rows).drop(columns="_row", errors="ignore")
        if out_dir is not None:
            with atomic_path(Path(out_dir) / "predictions.csv") as tmp:
                table.to_csv(tmp, index=False)
        return table

    def throughput(self, paths: Sequence[str | Path], batch_size: int = 8) -> dict[str, float]:
        """Images/s for read → both stages → scores (no overlay, nothing written)."""
        t0 = time.perf_counter()
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [read_image(p)[0] for p in chunk]
            for m, im in zip(self.segment_batch(images), images):
                try:
                    self.score(m, image_shape=im.shape)
                except CxrlabError:
                    pass  # an unscorable image still costs its time
        dt = time.perf_counter() - t0
        return {"images": len(paths), "seconds": dt, "images_per_s": len(paths) / dt if dt > 0 else float("nan")}
