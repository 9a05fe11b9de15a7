"""Phantom clinical course: studies over days, evolving severity, ICU admission and survival.

Severity (0..1) follows a bump that peaks ``peak_day`` days after presentation; patients who die never
recover (severity keeps rising). ICU admission and death are drawn from logistic risks of the course's peak
severity and age, so imaging carries real prognostic signal. Survival is in days from the first study;
``death_event`` 0 means censored at ``survival_days`` (end of follow-up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Course:
    finding: str
    sex: str
    age: int
    offsets: tuple[int, ...]       # days since the first study
    severities: tuple[float, ...]  # one per study
    went_icu: int
    survival_days: int
    death_event: int


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def sample_course(rng: np.random.Generator, finding: str, max_studies: int) -> Course:
    sex = "F" if rng.random() < 0.45 else "M"
    age = int(np.clip(rng.normal(62 if finding == "covid19" else 50, 16), 18, 95))
    if finding == "normal":
        n = int(rng.integers(1, min(2, max_studies) + 1))
    else:
        n = int(rng.integers(1, max_studies + 1))
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 5, size=n - 1))]).astype(int)
    if finding == "normal":
        return Course(finding, sex, age, tuple(int(o) for o in offsets), (0.0,) * n, 0,
                      int(offsets[-1] + rng.integers(14, 61)), 0)
    peak = float(np.clip(rng.beta(2.2, 1.6) * (1.0 if finding != "bacterial" else 0.85), 0.1, 1.0))
    peak_day = float(rng.uniform(2, 10))
    width = float(rng.uniform(4, 9))
    # risks depend on the whole course, not only on what was imaged
    icu = int(rng.random() < _sigmoid(9.0 * (peak - 0.65) + 0.03 * (age - 60)))
    died = int(rng.random() < _sigmoid(7.0 * (peak - 0.8) + 0.05 * (age - 60) + 1.0 * icu))
    t = offsets.astype(float)
    bump = np.exp(-((t - peak_day) ** 2) / (2 * width**2))
    if died:
        bump = np.where(t > peak_day, 1.0, bump)  # no recovery
    sev = np.clip(peak * np.maximum(bump, 0.25) + rng.normal(0, 0.03, size=n), 0.08, 1.0)
    last = int(offsets[-1])
    survival = last + int(rng.integers(1, 15)) if died else last + int(rng.integers(14, 61))
    return Course(finding, sex, age, tuple(int(o) for o in offsets), tuple(float(s) for s in sev), icu,
                  survival, died)
