"""Grid expansion and ranking: combinations as recipe overrides with stable ids, top-k and joint selection."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cxrlab.errors import ConfigError


@dataclass(frozen=True)
class Combination:
    """One grid point: ``values`` (recipe key -> value) in grid order; ``id`` is readable and stable."""

    values: tuple[tuple[str, Any], ...]
    id: str = field(default="")

    def overrides(self) -> list[str]:
        return [f"{k}={_yaml_value(v)}" for k, v in self.values]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def _yaml_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "" for c in text)
    if len(safe) > 24 or safe != text:
        safe = safe[:16] + "-" + hashlib.sha1(text.encode()).hexdigest()[:6]
    return safe


def expand_grid(grid: dict[str, Sequence[Any]]) -> list[Combination]:
    """Every combination of the grid's values (the last key varying fastest), ids ``value1__value2__...``."""
    keys = list(grid)
    combos = []
    for values in itertools.product(*(grid[k] for k in keys)):
        pairs = tuple(zip(keys, values))
        combos.append(Combination(pairs, "__".join(_short(v) for v in values)))
    ids = [c.id for c in combos]
    if len(set(ids)) != len(ids):
        raise ConfigError("grid values give duplicate combination ids; make the values distinct")
    return combos


def rank(scores: dict[str, dict[str, float]], metric: str, goal: str = "min") -> list[str]:
    """Ids ordered best first by ``metric``; a missing or NaN score ranks last; ties by id (stable)."""
    def key(item: tuple[str, dict[str, float]]) -> tuple[int, float, str]:
        v = item[1].get(metric, float("nan"))
        bad = v is None or not np.isfinite(v)
        return (1 if bad else 0, 0.0 if bad else (v if goal == "min" else -v), item[0])

    return [k for k, _ in sorted(scores.items(), key=key)]


def top_k(scores: dict[str, dict[str, float]], metric: str, k: int, goal: str = "min") -> list[str]:
    return rank(scores, metric, goal)[:k]


def joint_best(scores: dict[str, dict[str, float]], criterion: Sequence[tuple[str, str]]) -> tuple[str, dict]:
    """The id with the smallest sum of ranks over ``criterion`` ((metric, goal) pairs); ties: the first metric.

    Returns the id and a table ``{id: {metric_rank: r, ..., rank_sum: s}}`` for the report."""
    if not scores:
        raise ConfigError("nothing to select from: no scored combination")
    table: dict[str, dict[str, float]] = {k: {} for k in scores}
    for metric, goal in criterion:
        for r, k in enumerate(rank(scores, metric, goal), start=1):
            table[k][f"{metric}_rank"] = r
    for k in table:
        table[k]["rank_sum"] = sum(v for n, v in table[k].items() if n.endswith("_rank"))
    first = criterion[0][0]
    best = min(table, key=lambda k: (table[k]["rank_sum"], table[k][f"{first}_rank"], k))
    return best, table
