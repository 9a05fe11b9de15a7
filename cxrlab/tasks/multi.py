"""Several tasks trained together on one backbone (multi-task heads), seen as one task by the trainer."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor, nn

from cxrlab.errors import ConfigError
from cxrlab.tasks.base import TASKS, Task, create_task


class TaskSet:
    """An ordered set of tasks; targets are concatenated column blocks, the loss a weighted sum.

    The first task is the *primary* one: it defines the balancing strata and the early-stopping metric names.
    """

    def __init__(self, tasks: list[Task]):
        if not tasks:
            raise ConfigError("a recipe needs at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique, got {names}")
        self.tasks = tasks
        self.slices: list[slice] = []  # row targets (manifest columns)
        self.item_slices: list[slice] = []  # item targets (one side's column for per-side tasks)
        start = item_start = 0
        for t in tasks:
            self.slices.append(slice(start, start + len(t.columns)))
            start += len(t.columns)
            width = 1 if self._per_side(t) else len(t.columns)
            self.item_slices.append(slice(item_start, item_start + width))
            item_start += width

    @staticmethod
    def _per_side(task: Task) -> bool:
        return bool(getattr(task, "per_side", False))

    @property
    def per_side(self) -> bool:
        return any(self._per_side(t) for t in self.tasks)

    @classmethod
    def from_config(cls, specs: list[dict[str, Any]], per_side: bool = False) -> "TaskSet":
        """Tasks from recipe specs; ``per_side`` when the ROI scheme yields one input per lung."""
        tasks = []
        for spec in specs:
            spec = dict(spec)
            kind = spec.pop("kind", None)
            if kind is None:
                raise ConfigError(f"task {spec}: missing 'kind'")
            if per_side:
                if "per_side" not in inspect.signature(TASKS.get(kind).__init__).parameters:
                    raise ConfigError(f"task {kind} cannot be predicted per lung; the ROI scheme gives one input per "
                                      f"lung (use input.roi none, lungs or image+mask for this task)")
                spec["per_side"] = True
            task = create_task(kind, **spec)
            tasks.append(task)
        return cls(tasks)

    @property
    def primary(self) -> Task:
        return self.tasks[0]

    @property
    def columns(self) -> list[str]:
        return [c for t in self.tasks for c in t.columns]

    def targets(self, df: pd.DataFrame, source: object = "manifest") -> np.ndarray:
        return np.concatenate([t.targets(df, source) for t in self.tasks], axis=1)

    @property
    def item_columns(self) -> list[str]:
        """A name per item target column: the manifest column, or the task name for a per-side task (its one
        column is "this lung", whichever side the item is). Side-specific names (``*right*``/``*left*``, Brixia
        zones ``*_A..F``) let a mirroring transform swap the targets with the image."""
        return [name for t in self.tasks for name in ([t.name] if self._per_side(t) else t.columns)]

    def item_targets(self, row_targets: np.ndarray, item_row: np.ndarray, item_side: np.ndarray) -> np.ndarray:
        """Targets per model input: a per-side task keeps only the column of the item's side."""
        blocks = []
        for t, sl in zip(self.tasks, self.slices):
            block = row_targets[item_row, sl]
            if self._per_side(t):
                block = block[np.arange(len(item_row)), item_side][:, None]
            blocks.append(block)
        return np.concatenate(blocks, axis=1)

    def strata(self, item_targets: np.ndarray) -> np.ndarray | None:
        """Balancing class per item (from the primary task)."""
        return self.primary.strata(item_targets[:, self.item_slices[0]])

    def labelled(self, targets: np.ndarray) -> np.ndarray:
        """Rows with at least one target (others cannot teach anything and are dropped)."""
        return ~np.isnan(targets).all(axis=1)

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for t in self.tasks:
            out.update(t.heads(num_features))
        return out

    def loss(self, outputs: dict[str, Tensor], targets: Tensor, sample_weight: Tensor | None = None,
             focal_gamma: float = 0.0) -> Tensor:
        total = 0.0
        for t, sl in zip(self.tasks, self.item_slices):
            gamma = focal_gamma if t.supports_focal else 0.0
            total = total + t.weight * t.loss(outputs, targets[:, sl], sample_weight, gamma)
        return total

    def decode(self, outputs: dict[str, np.ndarray], item_row: np.ndarray | None = None,
               item_side: np.ndarray | None = None, n_rows: int | None = None) -> dict[str, np.ndarray]:
        """Row-level prediction columns; per-side items are gathered into each side's columns."""
        out: dict[str, np.ndarray] = {}
        for t in self.tasks:
            decoded = t.decode(outputs)
            if not self._per_side(t):
                out.update(decoded)
                continue
            if item_row is None or item_side is None or n_rows is None:
                raise ConfigError(f"task {t.name} is per-side: decoding needs item rows and sides")
            for key, values in decoded.items():
                for side in (0, 1):
                    pick = item_side == side
                    col = np.full(n_rows, np.nan)
                    col[item_row[pick]] = np.asarray(values, dtype=float)[pick]
                    out[t.side_key(key, side)] = col
        return out

    def metrics(self, targets: np.ndarray, decoded: dict[str, np.ndarray]) -> dict[str, float]:
        if len(self.tasks) == 1:
            return self.primary.metrics(targets, decoded)
        out = {}
        for t, sl in zip(self.tasks, self.slices):
            out.update({f"{t.name}.{k}": v for k, v in t.metrics(targets[:, sl], decoded).items()})
        return out

    def config(self) -> list[dict[str, Any]]:
        return [t.config() for t in self.tasks]
