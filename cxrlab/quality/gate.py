"""The image-quality gate: view (frontal / lateral), inverted grey levels, and "is this a chest radiograph".

All three are learned from radiographs, not rules: a frozen backbone's pooled features feed

- a logistic regression *frontal vs lateral* (trained on films whose view is recorded),
- a logistic regression *as displayed vs inverted* (every film and its negative, so no inverted film is needed),
- a distance to the chest films' features (cosine distance to the k-th nearest film by default; Mahalanobis
  with a Ledoit-Wolf covariance in a PCA space as an option): a photograph, a document or another modality
  lies far from every chest film. Thresholds are quantiles of the distances
  of *held-out* patients' films, so a normal film is refused with probability about ``1 - quantile``.

>>> gate = QualityGate.load("runs/quality")
>>> result = gate.check(image)            # float32 HxW in [0, 1]
>>> result.verdict, result.reasons
('ok', [])
>>> image = result.corrected              # the image with its grey levels put right (same array when fine)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import joblib
import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrlab.errors import InputError
from cxrlab.quality.config import QualityConfig
from cxrlab.quality.features import FeatureExtractor
from cxrlab.utils import atomic_path, atomic_write_json, json_safe

GATE_FILE = "gate.joblib"
META_FILE = "quality.json"
FORMAT_VERSION = 1
VERDICTS = ("ok", "warn", "refuse")
NOT_CHECKED = "not checked (no quality model configured)"


@dataclass
class QualityResult:
    """One image's verdict. ``corrected`` (not serialised) is the image to analyse further."""

    image: str
    view: str
    view_prob: float                 # probability of a lateral view
    inverted: bool
    inverted_prob: float
    ood_score: float                 # feature distance to the chest films (config.ood_method)
    verdict: str                     # ok | warn | refuse
    reasons: list[str] = field(default_factory=list)
    corrected: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("corrected")
        for k in ("view_prob", "inverted_prob", "ood_score"):
            d[k] = round(float(d[k]), 4)
        return d

    def columns(self) -> dict[str, Any]:
        """The ``quality_*`` columns batch commands write."""
        return {"quality_verdict": self.verdict, "quality_view": self.view,
                "quality_view_prob": round(self.view_prob, 4), "quality_inverted": bool(self.inverted),
                "quality_ood_score": round(self.ood_score, 3), "quality_reasons": "; ".join(self.reasons)}


class MahalanobisOOD:
    """Distance of features to a training distribution: standardise → PCA → Ledoit-Wolf Mahalanobis."""

    def __init__(self, n_components: int = 64, seed: int = 0):
        self.n_components, self.seed = n_components, seed

    def fit(self, x: np.ndarray) -> "MahalanobisOOD":
        # at least ~10 films per dimension, or a few hundred films make any new film look far away
        k = int(max(2, min(self.n_components, x.shape[0] // 10, x.shape[1])))
        self.pre = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=self.seed)).fit(x)
        self.cov = LedoitWolf().fit(self.pre.transform(x))
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(self.cov.mahalanobis(self.pre.transform(x)), 0.0))


class KnnOOD:
    """Cosine distance to the k-th nearest chest film (deep nearest-neighbour OOD; Sun et al., ICML 2022).

    Needs no covariance, so it holds with a few dozen films where a Mahalanobis fit would not.
    """

    def __init__(self, k: int = 5):
        self.k = k

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def fit(self, x: np.ndarray) -> "KnnOOD":
        from sklearn.neighbors import NearestNeighbors

        self.k = int(min(self.k, len(x)))
        self.index = NearestNeighbors(n_neighbors=self.k).fit(self._unit(x))
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        # unit vectors: euclidean distance d = sqrt(2 - 2 cos), reported as the cosine distance 1 - cos
        d = self.index.kneighbors(self._unit(x))[0][:, -1]
        return d ** 2 / 2


def make_ood(config: QualityConfig) -> "KnnOOD | MahalanobisOOD":
    if config.ood_method == "mahalanobis":
        return MahalanobisOOD(config.ood_components, config.seed)
    return KnnOOD(config.ood_neighbors)


def _logistic(C: float, seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=2000,
                                                              random_state=seed))


@dataclass
class GateModels:
    """The fitted parts, without the backbone (which is rebuilt from the config)."""

    view: Pipeline | None            # None when no lateral film was available to learn from
    inversion: Pipeline
    ood: KnnOOD | MahalanobisOOD
    ood_warn: float
    ood_refuse: float


def fit_gate_models(config: QualityConfig, features: np.ndarray, inverted_features: np.ndarray,
                    lateral: np.ndarray, fit_rows: np.ndarray, val_rows: np.ndarray) -> GateModels:
    """Fit the three models on ``fit_rows``; OOD thresholds from the distances of ``val_rows`` (other patients).

    ``lateral``: 1 lateral, 0 frontal, -1 view unknown (left out of the view model only).
    """
    view_rows = fit_rows[lateral[fit_rows] >= 0]
    view = None
    if len(np.unique(lateral[view_rows])) == 2:
        view = _logistic(config.C, config.seed).fit(features[view_rows], lateral[view_rows])
    x_inv = np.concatenate([features[fit_rows], inverted_features[fit_rows]])
    y_inv = np.r_[np.zeros(len(fit_rows)), np.ones(len(fit_rows))]
    inversion = _logistic(config.C, config.seed).fit(x_inv, y_inv)
    ood = make_ood(config).fit(features[fit_rows])
    held = ood.score(features[val_rows]) if len(val_rows) else ood.score(features[fit_rows])
    warn = float(np.quantile(held, config.ood_warn_quantile))
    refuse = float(np.quantile(held, config.ood_refuse_quantile)) * config.ood_refuse_margin
    return GateModels(view, inversion, ood, warn, max(refuse, warn))


class QualityGate:
    """A trained gate: features → verdict. ``QualityGate.load(run_dir)``; ``check(image)``; ``check_many``."""

    def __init__(self, config: QualityConfig, models: GateModels, extractor: FeatureExtractor | None = None,
                 run_dir: Path | None = None, lateral_policy: str | None = None):
        self.config, self.models, self.run_dir = config, models, run_dir
        self.extractor = extractor or FeatureExtractor(config.backbone, config.weights, config.size,
                                                       config.batch_size)
        self.lateral_policy = lateral_policy or config.lateral

    # --- persistence ------------------------------------------------------------------------------------
    def save(self, run_dir: str | os.PathLike, meta: dict[str, Any]) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / GATE_FILE) as tmp:
            joblib.dump(self.models, tmp)
        atomic_write_json(run_dir / META_FILE, json_safe({"format_version": FORMAT_VERSION, "kind": "quality",
                                                          "config": self.config.model_dump(), **meta}))
        return run_dir

    @classmethod
    def load(cls, run_dir: str | os.PathLike, lateral_policy: str | None = None) -> "QualityGate":
        run_dir = Path(run_dir)
        meta_path = run_dir / META_FILE
        if not meta_path.is_file():
            raise InputError(run_dir, f"not a quality run (no {META_FILE}; make one with `cxrlab quality train`)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(meta_path, f"not valid JSON ({exc.msg})") from None
        if meta.get("kind") != "quality" or meta.get("format_version") != FORMAT_VERSION:
            raise InputError(meta_path, f"quality run of another format (kind {meta.get('kind')!r}, version "
                                        f"{meta.get('format_version')!r}; this cxrlab reads version {FORMAT_VERSION})")
        try:
            models = joblib.load(run_dir / GATE_FILE)
        except FileNotFoundError:
            raise InputError(run_dir / GATE_FILE, "missing: the quality run did not finish") from None
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign pickle is a bad run file
            raise InputError(run_dir / GATE_FILE, f"cannot be read ({type(exc).__name__}): retrain the gate") from None
        if lateral_policy not in (None, "refuse", "warn"):
            raise InputError("quality", f"lateral policy must be refuse or warn, got {lateral_policy!r}")
        return cls(QualityConfig.model_validate(meta["config"]), models, run_dir=run_dir,
                   lateral_policy=lateral_policy)

    # --- inference --------------------------------------------------------------------------------------
    def _decide(self, name: str, image: np.ndarray, inverted_prob: float, view_prob: float, ood: float
                ) -> QualityResult:
        reasons: list[str] = []
        verdict = "ok"
        inverted = inverted_prob > self.config.inversion_threshold
        lateral = view_prob > self.config.view_threshold
        m = self.models
        if ood > m.ood_refuse:
            # view and polarity of something that is not a chest film mean nothing: one reason only
            reasons.append(f"not a chest radiograph (feature distance {ood:.3g} > {m.ood_refuse:.3g})")
            return QualityResult(name, "lateral" if lateral else "frontal", view_prob, False, inverted_prob, ood,
                                 "refuse", reasons, corrected=image)
        if ood > m.ood_warn:
            verdict = "warn"
            reasons.append(f"unusual for a chest radiograph (feature distance {ood:.3g} > {m.ood_warn:.3g})")
        if lateral:
            verdict = "refuse" if self.lateral_policy == "refuse" else "warn"
            reasons.append(f"lateral view (p={view_prob:.2f}): lungs, zones and scores need a frontal film")
        if inverted:
            if verdict == "ok":
                verdict = "warn"
            reasons.append(f"inverted grey levels (p={inverted_prob:.2f}): corrected")
        return QualityResult(name, "lateral" if lateral else "frontal", view_prob, inverted, inverted_prob, ood,
                             verdict, reasons, corrected=(1.0 - image) if inverted else image)

    def check_many(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> list[QualityResult]:
        """Batched checks; an image judged inverted is corrected before its view and distance are measured."""
        names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]
        feats = self.extractor(images, on_batch)
        inv_p = self.models.inversion.predict_proba(feats)[:, 1]
        flip = np.flatnonzero(inv_p > self.config.inversion_threshold)
        if len(flip):
            feats[flip] = self.extractor([images[i] for i in flip], invert=True)
        view_p = (self.models.view.predict_proba(feats)[:, 1] if self.models.view is not None
                  else np.zeros(len(images)))
        ood = self.models.ood.score(feats)
        return [self._decide(n, np.asarray(im, np.float32), float(ip), float(vp), float(d))
                for n, im, ip, vp, d in zip(names, images, inv_p, view_p, ood)]

    def check(self, image: np.ndarray, name: str = "image") -> QualityResult:
        return self.check_many([image], [name])[0]

    def card(self) -> dict[str, Any]:
        return {"run": str(self.run_dir) if self.run_dir else None, "backbone": self.config.backbone,
                "size": self.config.size, "lateral_policy": self.lateral_policy,
                "ood_warn": round(self.models.ood_warn, 3), "ood_refuse": round(self.models.ood_refuse, 3),
                "view_model": self.models.view is not None}
