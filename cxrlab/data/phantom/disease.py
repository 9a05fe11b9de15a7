"""Phantom disease: ground-glass and consolidation drawn only inside the lungs, placed by diagnosis.

Each lung gets a score field = spatial prior (where this diagnosis puts disease) x a smooth random texture
(fixed per patient, so disease grows coherently across a patient's studies). The diseased region is the
top-``f`` quantile of that field inside the lung, so a requested involved fraction ``f`` is met to the pixel;
the densest part of it becomes consolidation.

- bacterial: focal lobar consolidation in one lung (upper, middle or lower lobe, sharp fissure edge).
- viral: bilateral perihilar interstitial (reticular ground glass spreading out from the hila).
- covid19: bilateral peripheral, lower-zone ground glass, consolidating when severe.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DiseasePattern:
    """Patient-level disease layout. ``sides`` weights the patient (right, left) lungs (0 = never involved)."""

    finding: str
    sides: tuple[float, float]
    lobe: tuple[float, float] = (0.0, 1.0)  # bacterial: vertical extent of the lobe (0 top .. 1 base)
    texture_seed: int = 0


def sample_pattern(rng: np.random.Generator, finding: str) -> DiseasePattern:
    seed = int(rng.integers(2**31))
    if finding == "bacterial":
        right = rng.random() < 0.6  # right-sided pneumonia is more common
        lobe = [(0.0, 0.4), (0.35, 0.7), (0.55, 1.0)][rng.choice(3, p=[0.25, 0.15, 0.6])]
        return DiseasePattern(finding, (1.0, 0.0) if right else (0.0, 1.0), lobe, seed)
    if finding in ("viral", "covid19"):
        return DiseasePattern(finding, (rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)), texture_seed=seed)
    return DiseasePattern(finding, (0.0, 0.0), texture_seed=seed)


def involved_fractions(pattern: DiseasePattern, severity: float) -> tuple[float, float]:
    """Fraction of each lung (patient right, left) to involve at a given severity in [0, 1]."""
    if pattern.finding == "normal" or severity <= 0:
        return 0.0, 0.0
    if pattern.finding == "bacterial":
        main = 0.05 + 0.75 * severity
        spill = 0.03 + (severity - 0.75) * 0.8 if severity > 0.75 else 0.0  # severe: spreads to the other lung
        return (main, spill) if pattern.sides[0] else (spill, main)
    reach = 0.65 if pattern.finding == "viral" else 0.9
    return tuple(float(min(0.98, 0.04 + reach * severity * w)) for w in pattern.sides)  # type: ignore[return-value]


def consolidation_share(finding: str, severity: float) -> float:
    """Share of a lung's involved region that is consolidation (the rest is ground glass)."""
    if finding == "bacterial":
        return float(np.clip(1.2 * severity - 0.1, 0.0, 0.85))  # early lobar pneumonia starts as ground glass
    if finding == "viral":
        return 0.0 if severity < 0.7 else 0.2
    if finding == "covid19":
        return float(np.clip((severity - 0.45) * 1.2, 0.0, 0.6))
    return 0.0


def _lung_coordinates(lung: np.ndarray, lateral_is_left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of ``lung``: ``u`` 0 medial .. 1 lateral (per row) and ``v`` 0 apex .. 1 base."""
    size = lung.shape[0]
    rows = np.flatnonzero(lung.any(axis=1))
    cols = np.arange(size, dtype=np.float32)
    v = np.zeros(lung.shape, np.float32)
    u = np.zeros(lung.shape, np.float32)
    if rows.size == 0:
        return u, v
    v[:] = ((np.arange(size, dtype=np.float32) - rows[0]) / max(1, rows[-1] - rows[0]))[:, None]
    has = lung.any(axis=1)
    first = np.where(has, lung.argmax(axis=1), 0).astype(np.float32)
    last = np.where(has, size - 1 - lung[:, ::-1].argmax(axis=1), 1).astype(np.float32)
    width = np.maximum(last - first, 1.0)[:, None]
    frac = (cols[None, :] - first[:, None]) / width
    u[:] = 1.0 - frac if lateral_is_left else frac
    return np.clip(u, 0, 1), np.clip(v, 0, 1)


def _texture(seed: int, size: int, cells: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = cv2.resize(rng.random((cells, cells)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(t, 0, 1)


def _prior(pattern: DiseasePattern, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if pattern.finding == "bacterial":
        lo, hi = pattern.lobe
        centre = (lo + hi) / 2
        fissure = 0.12 * (u - 0.5)  # fissures run obliquely, higher laterally, and give a lobe a sharp border
        inside = (v >= lo - fissure) & (v <= hi - fissure)
        return np.exp(-((v - centre) ** 2) / 0.05 - ((u - 0.55) ** 2) / 0.3) * np.where(inside, 1.0, 0.15)
    if pattern.finding == "viral":
        return np.exp(-((u - 0.15) ** 2) / 0.12 - ((v - 0.5) ** 2) / 0.10)  # around the hilum
    if pattern.finding == "covid19":
        return np.exp(-((1 - u) ** 2) / 0.15 - ((1 - v) ** 2) / 0.15)  # periphery, base
    return np.zeros_like(u)


def draw_disease(pattern: DiseasePattern, severity: float, right_lung: np.ndarray, left_lung: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (disease mask, consolidation mask, added attenuation). Masks are uint8 {0,1} inside the lungs."""
    size = right_lung.shape[0]
    disease = np.zeros((size, size), np.uint8)
    consolidation = np.zeros((size, size), np.uint8)
    if pattern.finding == "normal" or severity <= 0:
        return disease, consolidation, np.zeros((size, size), np.float32)
    blobs = _texture(pattern.texture_seed, size, 9)
    fine = _texture(pattern.texture_seed + 1, size, 40)
    for lung, frac, weight, lateral_left in zip((right_lung, left_lung), involved_fractions(pattern, severity),
                                                pattern.sides, (True, False)):
        n = int(lung.sum())
        k = int(round(frac * n))
        if k == 0:
            continue
        u, v = _lung_coordinates(lung, lateral_left)
        score = _prior(pattern, u, v) * (0.5 + 0.5 * blobs)
        idx = np.flatnonzero(lung)
        vals = score.ravel()[idx]
        order = np.argsort(-vals, kind="stable")  # the k highest-scoring pixels: exactly the requested fraction
        disease.ravel()[idx[order[:k]]] = 1
        # each lung consolidates at its own pace (its side weight), so the two lungs can differ in pattern
        kc = int(round(consolidation_share(pattern.finding, severity * max(weight, 0.5)) * k))
        if kc:
            consolidation.ravel()[idx[order[:kc]]] = 1
    # appearance: hazy ground glass (reticular for viral), dense consolidation; soft edges kept inside the lungs
    lungs = (right_lung | left_lung).astype(np.float32)
    ggo = cv2.GaussianBlur(disease.astype(np.float32), (0, 0), size / 128)
    if pattern.finding == "viral":
        ggo *= 0.6 + 0.8 * np.clip(1.0 - np.abs(fine - 0.5) * 6, 0, 1)
    dense = cv2.GaussianBlur(consolidation.astype(np.float32), (0, 0), size / 256)
    strength = rng.uniform(0.10, 0.15)
    added = (strength * ggo + rng.uniform(0.20, 0.26) * dense) * lungs
    return disease, consolidation, added.astype(np.float32)
