"""``train(recipe, data, out)``: the training loop behind every recipe.

Stages (two-stage fine-tuning: head on a frozen backbone, then the last N blocks at a lower learning rate),
balancing, ReduceLROnPlateau, early stopping on validation loss with the best weights restored, an atomic
checkpoint after every epoch (``--resume`` continues to the same result as an uninterrupted run: every epoch
draws its randomness from ``(seed, stage, epoch)``), and a cache of the frozen part's outputs when nothing random
happens before it.

Run directory: ``recipe.yaml``, ``split.csv``, ``model.json``, ``weights_report.json``, ``checkpoints/{last,best}.pt``,
``history.csv``, ``metrics.json``, ``predictions.parquet``; with ``tracking.mlflow`` also ``mlflow.json`` and the
MLflow store (``mlruns/`` unless ``tracking.uri`` says otherwise; see cxrlab.train.tracking).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest, load_manifest
from cxrlab.data.splits import SPLIT, load_split, save_split
from cxrlab.errors import ConfigError, InputError
from cxrlab.models import CxrNet, create_model, get_backbone_entry
from cxrlab.models.weights import WeightSource, load_checkpoint
from cxrlab.recipes import Recipe, load_recipe, save_recipe
from cxrlab.recipes.schema import StageSpec
from cxrlab.tasks import TaskSet
from cxrlab.train import patch_mode
from cxrlab.train.balancing import get_balancer
from cxrlab.train.data import TRAIN_ONLY, RunTable, build_table
from cxrlab.train.inputs import AugmentedItems, InputPipeline, TensorStore, prepare_inputs, spec_hash
from cxrlab.train.speed import autocast, resolve_channels_last, resolve_precision, to_memory_format
from cxrlab.train.tracking import require_mlflow, track_run
from cxrlab.versions import software_versions
from cxrlab.utils import (atomic_path, atomic_write_json, cxrlab_home, file_sha256, remove_stale_temps,
                          seed_everything)
from cxrlab.machine import restores_torch_threads

EpochCallback = Callable[[dict[str, Any]], None]


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return (seed * 1_000_003 + stage * 10_007 + epoch) % (2**63)


def build_tasks(recipe: Recipe, pipeline: InputPipeline) -> TaskSet:
    if pipeline.per_image not in (1, 2):
        raise ConfigError(f"input.roi={recipe.input.roi}: {pipeline.per_image} inputs per image is not supported")
    tasks = TaskSet.from_config(recipe.tasks, per_side=pipeline.per_image == 2)
    if pipeline.patches is not None:
        patch_mode.check_tasks(tasks)
    return tasks


def build_model(recipe: Recipe, tasks: TaskSet, pipeline: InputPipeline, weights: str | None = None
                ) -> tuple[CxrNet, Any]:
    """The run's network: seeded, so a ``none`` initialisation is the same on every run of the recipe."""
    seed_everything(recipe.seed)
    return create_model(recipe.model.backbone, tasks.heads, in_chans=pipeline.in_chans,
                        weights=recipe.model.weights if weights is None else weights, dropout=recipe.model.dropout)


def _weights_identity(recipe: Recipe) -> str:
    src = WeightSource.parse(recipe.model.weights)
    if src.kind == "none":
        return f"none-seed{recipe.seed}"  # a random init is identified by its seed
    if src.kind == "file":
        return f"file-{file_sha256(src.arg)[:16]}"
    return str(src)


@dataclass
class StagePlan:
    index: int
    frozen: int  # backbone stages kept frozen (from the input side)
    n_stages: int
    cached: bool
    views: int = 0  # training draws come from K cached augmented views per item (0: inputs as they are)

    @property
    def start(self) -> int | None:
        """Where training-time forward passes start: None = raw input, else stage index (n_stages = features)."""
        return self.frozen if self.cached else None


@dataclass
class TrainState:
    stage: int = 0
    epoch: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    min_frozen: int | None = None  # fewest frozen stages so far: deeper ones were trained, their outputs changed
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, recipe: Recipe, table: RunTable, tasks: TaskSet, pipeline: InputPipeline,
                 inputs: torch.Tensor, model: CxrNet, run_dir: Path, show_progress: bool = True,
                 on_epoch_end: EpochCallback | None = None):
        self.recipe, self.table, self.tasks, self.pipeline = recipe, table, tasks, pipeline
        self.inputs = inputs  # (items, C, H, W) float16
        self.model = model
        self.run_dir = run_dir
        self.show_progress = show_progress
        self.on_epoch_end = on_epoch_end
        tr = recipe.train
        self.precision = resolve_precision(tr.precision)
        self.channels_last = resolve_channels_last(tr.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.balancer = get_balancer(tr.balancing)
        self.train_items = table.items("train")
        self.val_items = table.items("val")
        if tr.side is not None:  # an independent one-sided model: the other lung's inputs are neither seen nor scored
            if not tasks.per_side:
                raise ConfigError(f"train.side={tr.side} needs a per-lung ROI (input.roi lung or midline); with "
                                  f"input.roi={recipe.input.roi} give the task one side instead (sides: [{tr.side}])")
            keep = table.item_side == (0 if tr.side == "right" else 1)
            self.train_items = self.train_items[keep[self.train_items]]
            self.val_items = self.val_items[keep[self.val_items]]
        self.eval_targets = table.row_targets
        if tr.side is not None:  # validation scores this lung only: the other side's targets are hidden
            other = 1 if tr.side == "right" else 0
            self.eval_targets = table.row_targets.copy()
            for t, sl in zip(tasks.tasks, tasks.slices):
                if getattr(t, "per_side", False):
                    self.eval_targets[:, sl.start + other] = np.nan
        strata = tasks.strata(table.item_targets)
        self.train_strata = None if strata is None else strata[self.train_items]
        if self.train_strata is None and tr.balancing != "none":
            raise ConfigError(f"train.balancing={tr.balancing}: the primary task {tasks.primary.name} has no classes")
        weights = None if self.train_strata is None else self.balancer.sample_weight(self.train_strata)
        self.sample_weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.focal_gamma = tr.focal_gamma if self.balancer.focal else 0.0
        self.augment = pipeline.augmenter(force=self.balancer.needs_augmentation)
        self.cache_dir = Path(tr.cache_dir) if tr.cache_dir else cxrlab_home() / "cache"
        self.n_stages = len(model.backbone.stages())
        self.ckpt_dir = run_dir / "checkpoints"
        self._features: torch.Tensor | None = None
        self._features_start: int | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None  # (K, train items, ...) outputs and targets
        self._views_start: int | None = None

    # --- stage set-up ---------------------------------------------------------------------------------
    def plan(self, index: int, state: TrainState) -> StagePlan:
        frozen = self._frozen_of(self.recipe.train.stages[index])
        untouched = state.min_frozen is None or frozen <= state.min_frozen
        # patch mode: no feature cache. Every step draws new random patches, so the frozen part's inputs never
        # repeat (a cache keyed by patch would never hit, one keyed by image would be wrong)
        # with augmentation the frozen part's inputs are random: cached only as a bank of K views per item
        views = self.recipe.train.augment_views if self.augment is not None else 0
        cached = (self.recipe.train.feature_cache is not False and frozen > 0 and untouched
                  and self.pipeline.patches is None and (self.augment is None or views > 0))
        return StagePlan(index, frozen, self.n_stages, cached, views if cached else 0)

    def _frozen_of(self, spec: StageSpec) -> int:
        """Backbone stages a training stage keeps frozen."""
        trainable = self.n_stages if spec.train_blocks == "all" else min(int(spec.train_blocks), self.n_stages)
        return self.n_stages - trainable

    def _set_trainable(self, plan: StagePlan) -> list[nn.Parameter]:
        stages = self.model.backbone.stages()
        for p in self.model.parameters():
            p.requires_grad_(True)
        for stage in stages[:plan.frozen]:
            for p in stage.parameters():
                p.requires_grad_(False)
        return [p for p in self.model.parameters() if p.requires_grad]

    def _train_mode(self, plan: StagePlan) -> None:
        self.model.train()
        for stage in self.model.backbone.stages()[:plan.frozen]:
            stage.eval()  # frozen BatchNorm keeps its statistics: the frozen part is a fixed function

    def _optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        tr = self.recipe.train
        if tr.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=tr.momentum, weight_decay=tr.weight_decay)
        cls = torch.optim.AdamW if tr.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, weight_decay=tr.weight_decay)

    # --- feature cache --------------------------------------------------------------------------------
    def _cache_key(self, plan: StagePlan) -> str:
        return spec_hash({"inputs": self.pipeline.key(), "backbone": self.recipe.model.backbone,
                          "weights": _weights_identity(self.recipe), "in_chans": self.pipeline.in_chans,
                          "frozen": plan.frozen, "precision": self.precision})

    def _item_keys(self) -> list[str]:
        df = self.table.df
        return [f"{df[schema.IMAGE].iat[r]}#{s}" for r, s in zip(self.table.item_row, self.table.item_side)]

    @torch.no_grad()
    def _frozen_outputs(self, plan: StagePlan, progress: Any) -> torch.Tensor:
        """Outputs of the frozen part for every item (pooled features when all of the backbone is frozen)."""
        if self._features is not None and self._features_start == plan.frozen:
            return self._features
        store = TensorStore(self.cache_dir / f"features-{self._cache_key(plan)}.pt")
        keys = self._item_keys()
        todo = store.missing(keys)
        if todo:
            self.model.eval()
            task = progress.add_task("caching frozen outputs", total=len(todo), status="") if progress else None
            bs = self.recipe.train.batch_size
            for i in range(0, len(todo), bs):
                idx = todo[i:i + bs]
                store.add([keys[j] for j in idx], self._frozen_part(self.inputs[idx].float(), plan.frozen))
                if task is not None:
                    progress.update(task, advance=len(idx))
            store.save()
        self._features, self._features_start = store.stack(keys), plan.frozen
        return self._features

    def _frozen_part(self, x: torch.Tensor, frozen: int, start: int = 0) -> torch.Tensor:
        """Outputs of backbone stages ``start..frozen`` (pooled features when ``frozen`` is every stage) of
        inputs (``start=0``) or of activations cached at stage ``start``, as they are cached."""
        with autocast(self.precision):
            if start == 0:
                x = to_memory_format(x, self.channels_last)
                out = self.model.features(x) if frozen == self.n_stages else self.model.boundary(x, frozen)
            else:
                out = (self.model.backbone(x, start=start) if frozen == self.n_stages
                       else self.model.backbone.run_stages(x, start, frozen))
        # bf16 runs store half precision (no coarser than bf16's own rounding); fp32 runs keep fp32 so a
        # cached run trains exactly like an uncached one (fp16 rounding grew to 5 % loss differences)
        out = out.float().contiguous()
        return out.half() if self.precision == "bf16" else out

    @torch.no_grad()
    def _augmented_views(self, plan: StagePlan, progress: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-part outputs of ``plan.views`` seeded augmented views of every training item, with the targets
        each view carries (a mirrored view swaps the side targets), ``(K, items, ...)`` each.

        One backbone pass per view: the views are cached on disk at the deepest boundary this or a later stage
        trains from (the last two blocks of stage 2 in the two-stage recipes), and a stage that freezes more
        runs its extra frozen blocks on those activations. View ``k`` of an item is seeded by ``(recipe seed, k)``
        and the item's identity, never by its position, so every fold and run that holds the item shares it."""
        if self._views is not None and self._views_start == plan.frozen:
            return self._views
        deepest = plan.frozen
        for spec in self.recipe.train.stages[plan.index + 1:]:  # later stages that will train on cached views
            frozen = self._frozen_of(spec)
            if frozen == 0:
                break  # trains every block: nothing after it is cached
            deepest = min(deepest, frozen)
        outputs, targets = self._views_at(deepest, plan.views, progress)
        if deepest < plan.frozen:
            self.model.eval()
            flat, bs = outputs.flatten(0, 1), self.recipe.train.batch_size
            parts = [self._frozen_part(flat[i:i + bs].float(), plan.frozen, start=deepest)
                     for i in range(0, len(flat), bs)]
            outputs = torch.cat(parts).unflatten(0, outputs.shape[:2])
        self._views, self._views_start = (outputs, targets), plan.frozen
        return self._views

    def _views_at(self, frozen: int, n_views: int, progress: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The views' activations after the first ``frozen`` backbone stages and their targets, from the disk
        cache (``views-*.pt``), computing the missing ones from the augmented inputs."""
        # the targets a view carries depend on the task's columns (a one-sided task keeps one of the two grades)
        key = spec_hash({"frozen": self._cache_key(StagePlan(0, frozen, self.n_stages, True)),
                         "seed": self.recipe.seed, "targets": self.tasks.item_columns,
                         "augment": self.pipeline.augment_specs(self.balancer.needs_augmentation)})
        store = TensorStore(self.cache_dir / f"views-{key}.pt")
        item_keys = self._item_keys()
        draw_keys = np.array([int(spec_hash(item_keys[i])[:15], 16) for i in range(len(item_keys))])
        names = [[f"{item_keys[i]}@view{k}" for i in self.train_items] for k in range(n_views)]
        todo = {k: store.missing(names[k]) for k in range(n_views)}
        total = sum(len(v) for v in todo.values())
        if total:
            self.model.eval()
            task = progress.add_task("caching augmented views", total=total, status="") if progress else None
            for k, positions in todo.items():
                if not positions:
                    continue
                items = self.train_items[positions]
                loader = torch.utils.data.DataLoader(
                    AugmentedItems(self.inputs, items, self.augment, _epoch_seed(self.recipe.seed, 10_000 + k, 0),
                                   self.table.item_targets, self.tasks.item_columns, draw_keys[items]),
                    batch_size=self.recipe.train.batch_size, shuffle=False,
                    num_workers=self.recipe.train.num_workers)
                done = 0
                for x, y in loader:
                    keys = [names[k][j] for j in positions[done:done + len(x)]]
                    store.add(keys, self._frozen_part(x, frozen))
                    store.add([f"{key}#targets" for key in keys], y)
                    done += len(x)
                    if task is not None:
                        progress.update(task, advance=len(x))
            store.save()
        outputs = torch.stack([store.stack(names[k]) for k in range(n_views)])
        targets = torch.stack([store.stack([f"{key}#targets" for key in names[k]]) for k in range(n_views)])
        return outputs, targets

    # --- passes ---------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, plan: StagePlan | None) -> dict[str, torch.Tensor]:
        x = to_memory_format(x, self.channels_last)
        with autocast(self.precision):
            if plan is None or plan.start is None:
                return self.model(x)
            if plan.start == plan.n_stages:
                return self.model.forward_heads(x)
            return self.model.forward_from(x, plan.start)

    def _source(self, plan: StagePlan | None) -> torch.Tensor:
        return self._features if plan is not None and plan.cached else self.inputs

    def _batches_for_epoch(self, plan: StagePlan, items: np.ndarray, seed: int):
        """``(start, x, y)`` per batch of ``items`` in order: inputs and their targets. Augmented in worker
        processes when augmentation is on; the targets then come from the augmented sample, so a flip that
        moves the patient's right lung to the other side also swaps the side targets."""
        bs = self.recipe.train.batch_size
        patches = self.pipeline.patches
        if plan.views:  # one of the item's cached augmented views per draw, chosen by the epoch's seed
            outputs, targets = self._views
            bank_row = np.full(len(self.table.item_targets), -1)
            bank_row[self.train_items] = np.arange(len(self.train_items))
            rows = torch.as_tensor(bank_row[items])
            view = torch.randint(plan.views, (len(items),), generator=torch.Generator().manual_seed(seed))
            for i in range(0, len(items), bs):
                yield i, outputs[view[i:i + bs], rows[i:i + bs]].float(), targets[view[i:i + bs], rows[i:i + bs]]
            return
        if self.augment is None:
            source = self._source(plan)
            targets = torch.as_tensor(self.table.item_targets)
            for i in range(0, len(items), bs):
                idx = items[i:i + bs]
                if patches is not None:  # fresh random lung-centred patches, train_count per image, this step only
                    yield (i, patch_mode.train_patches(source[idx], patches, [seed, i]),
                           targets[idx].repeat_interleave(patches.train_count, dim=0))
                    continue
                yield i, source[idx].float(), targets[idx]
            return
        loader = torch.utils.data.DataLoader(
            AugmentedItems(self.inputs, items, self.augment, seed, self.table.item_targets, self.tasks.item_columns),
            batch_size=bs, shuffle=False, num_workers=self.recipe.train.num_workers)
        for i, (x, y) in enumerate(loader):
            yield i * bs, x, y

    def train_epoch(self, plan: StagePlan, epoch: int, optimizer: torch.optim.Optimizer, progress: Any
                    ) -> tuple[float, float]:
        seed = _epoch_seed(self.recipe.seed, plan.index, epoch)
        torch.manual_seed(seed)  # dropout draws
        generator = torch.Generator().manual_seed(seed)
        if self.train_strata is None:
            pos = torch.randperm(len(self.train_items), generator=generator).numpy()
        else:
            pos = self.balancer.epoch_indices(self.train_strata, plan.index, generator)
        self._train_mode(plan)
        task = progress.add_task(f"stage {plan.index + 1} epoch {epoch + 1}", total=len(pos), status="") \
            if progress else None
        total, count, t0 = 0.0, 0, time.perf_counter()
        bs = self.recipe.train.batch_size
        for start, x, y in self._batches_for_epoch(plan, self.train_items[pos], seed):
            batch_pos = pos[start:start + bs]
            items = self.train_items[batch_pos]
            if len(items) < 2 and self.model.training and plan.frozen < plan.n_stages:
                continue  # BatchNorm cannot train on a batch of one
            out = self._forward(x, plan)
            w = None if self.sample_weight is None else self.sample_weight[batch_pos]
            if w is not None and self.pipeline.patches is not None:
                w = w.repeat_interleave(self.pipeline.patches.train_count)  # one weight per patch of the image
            loss = self.tasks.loss(out, y, w, self.focal_gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(items)
            count += len(items)
            if task is not None:
                progress.update(task, advance=len(items), status=f"loss {total / max(count, 1):.4f}")
        seconds = time.perf_counter() - t0
        if task is not None:
            progress.remove_task(task)
        return total / max(count, 1), count / max(seconds, 1e-9)

    @torch.no_grad()
    def predict_items(self, items: np.ndarray, plan: StagePlan | None) -> tuple[dict[str, np.ndarray], float]:
        """Logits for ``items`` and their unweighted validation loss (no balancing weights, no focal term)."""
        self.model.eval()
        source = self._source(plan)
        bs = max(self.recipe.train.batch_size, 64)
        targets = torch.as_tensor(self.table.item_targets)
        if self.pipeline.patches is not None:
            return self._predict_patch_items(items, source, targets, bs)
        outs: dict[str, list[np.ndarray]] = {}
        loss_sum, n = 0.0, 0
        for i in range(0, len(items), bs):
            idx = items[i:i + bs]
            out = self._forward(source[idx].float(), plan)
            loss_sum += float(self.tasks.loss(out, targets[idx])) * len(idx)
            n += len(idx)
            for k, v in out.items():
                outs.setdefault(k, []).append(v.float().numpy())
        return {k: np.concatenate(v) for k, v in outs.items()}, loss_sum / max(n, 1)

    def _predict_patch_items(self, items: np.ndarray, source: torch.Tensor, targets: torch.Tensor, bs: int
                             ) -> tuple[dict[str, np.ndarray], float]:
        """Patch mode: each image's ``count`` seeded patches in one forward pass, aggregated per image; the loss
        is the mean patch-level loss (every patch carries its image's targets), the quantity training lowers."""
        spec = self.pipeline.patches
        per_pass = max(1, bs // spec.count)  # images per forward pass: at least one image's K patches together
        outs: dict[str, list[np.ndarray]] = {}
        loss_sum, n = 0.0, 0
        for i in range(0, len(items), per_pass):
            idx = items[i:i + per_pass]
            out = self._forward(patch_mode.eval_patches(source[idx], spec), None)
            loss_sum += float(self.tasks.loss(out, targets[idx].repeat_interleave(spec.count, dim=0))) * len(idx)
            n += len(idx)
            for k, v in patch_mode.as_logits({k: v.float().numpy() for k, v in out.items()}, spec).items():
                outs.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in outs.items()}, loss_sum / max(n, 1)

    def evaluate(self, items: np.ndarray, plan: StagePlan | None) -> tuple[dict[str, float], float]:
        logits, loss = self.predict_items(items, plan)
        rows = np.unique(self.table.item_row[items])
        decoded = self._decode(logits, items)
        metrics = self.tasks.metrics(self.eval_targets[rows], {k: v[rows] for k, v in decoded.items()})
        return metrics, loss

    def _decode(self, logits: dict[str, np.ndarray], items: np.ndarray) -> dict[str, np.ndarray]:
        return self.tasks.decode(logits, self.table.item_row[items], self.table.item_side[items], len(self.table.df)) \
            if self.tasks.per_side else _scatter(self.tasks.decode(logits), self.table.item_row[items],
                                                 len(self.table.df))

    # --- checkpoints ----------------------------------------------------------------------------------
    def _save_last(self, state: TrainState, optimizer: torch.optim.Optimizer | None, scheduler: Any) -> None:
        payload = {
            "model": self.model.state_dict(), "state": state.__dict__,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "recipe": self.recipe.model_dump(mode="json"),
        }
        with atomic_path(self.ckpt_dir / "last.pt") as tmp:
            torch.save(payload, tmp)

    def _save_best(self, state: TrainState) -> None:
        with atomic_path(self.ckpt_dir / "best.pt") as tmp:
            torch.save({"model": self.model.state_dict(), "stage": state.stage, "epoch": state.epoch,
                        "val_loss": state.best_val, "recipe": self.recipe.model_dump(mode="json")}, tmp)

    def _restore_best(self) -> None:
        best = torch.load(self.ckpt_dir / "best.pt", map_location="cpu", weights_only=False)
        self.model.load_state_dict(best["model"])

    def _write_history(self, state: TrainState) -> None:
        with atomic_path(self.run_dir / "history.csv") as tmp:
            pd.DataFrame(state.history).to_csv(tmp, index=False)

    # --- the loop -------------------------------------------------------------------------------------
    def fit(self, state: TrainState, resume_payload: dict | None, progress: Any) -> StagePlan | None:
        plan = None
        stages = self.recipe.train.stages
        tr = self.recipe.train
        while state.stage < len(stages):
            spec = stages[state.stage]
            plan = self.plan(state.stage, state)
            params = self._set_trainable(plan)
            optimizer = self._optimizer(params, spec.lr)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tr.plateau_factor,
                                                                   patience=tr.plateau_patience)
            if resume_payload is not None and resume_payload.get("optimizer") is not None:
                optimizer.load_state_dict(resume_payload["optimizer"])
                scheduler.load_state_dict(resume_payload["scheduler"])
            resume_payload = None
            if plan.cached:
                self._frozen_outputs(plan, progress)  # validation and prediction: the inputs as they are
            if plan.views:
                self._augmented_views(plan, progress)
            while state.epoch < spec.epochs and state.bad_epochs < tr.early_stopping_patience:
                t0 = time.perf_counter()
                train_loss, speed = self.train_epoch(plan, state.epoch, optimizer, progress)
                val_metrics, val_loss = self.evaluate(self.val_items, plan)
                scheduler.step(val_loss)
                improved = val_loss < state.best_val
                state.epoch += 1
                if improved:
                    state.best_val, state.bad_epochs = val_loss, 0
                    self._save_best(state)
                else:
                    state.bad_epochs += 1
                row = {"stage": state.stage + 1, "epoch": state.epoch, "lr": optimizer.param_groups[0]["lr"],
                       "train_loss": train_loss, "val_loss": val_loss, "best": improved,
                       "train_images_per_s": speed, "seconds": time.perf_counter() - t0,
                       **{f"val_{k}": v for k, v in val_metrics.items() if isinstance(v, float)}}
                state.history.append(row)
                self._write_history(state)
                self._save_last(state, optimizer, scheduler)
                if progress is not None:
                    progress.console.print(
                        f"stage {row['stage']} epoch {row['epoch']}: train loss {train_loss:.4f}  val loss "
                        f"{val_loss:.4f}{'  *' if improved else ''}  ({speed:.0f} img/s)")
                if self.on_epoch_end is not None:
                    self.on_epoch_end(row)
            # stage done: continue from the best weights so far; deeper stages may be trained next
            self._restore_best()
            state.min_frozen = plan.frozen if state.min_frozen is None else min(state.min_frozen, plan.frozen)
            state.stage += 1
            state.epoch, state.bad_epochs = 0, 0
            self._save_last(state, None, None)
        return plan


def _chain(callbacks: Sequence[EpochCallback]) -> EpochCallback | None:
    """One callback calling each in turn (the tracker first: an interrupting callback must not cost a log)."""
    if not callbacks:
        return None

    def call(row: dict[str, Any]) -> None:
        for cb in callbacks:
            cb(row)

    return call


def _scatter(decoded: dict[str, np.ndarray], rows: np.ndarray, n_rows: int) -> dict[str, np.ndarray]:
    out = {}
    for k, v in decoded.items():
        v = np.asarray(v)
        col = np.full(n_rows, None, dtype=object) if v.dtype == object else np.full(n_rows, np.nan)
        col[rows] = v
        out[k] = col
    return out


def _as_manifests(data: Sequence[str | os.PathLike | Manifest] | str | os.PathLike | Manifest) -> list[Manifest]:
    items = [data] if isinstance(data, (str, os.PathLike, Manifest)) else list(data)
    return [d if isinstance(d, Manifest) else load_manifest(d) for d in items]


def _quality_filtered(manifests: list[Manifest], quality_run: str, run_dir: Path) -> list[Manifest]:
    """Drop the films the quality gate refuses, and inverted ones (training reads files as they are), from every
    manifest; what went and why is written to ``quality_exclusions.csv`` in the run."""
    from cxrlab.data.exclusions import ExclusionConfig, apply_exclusions

    config = ExclusionConfig(first_per_accession=False, min_age=None, radiographs_only=False, frontal_only=False,
                             drop_unreadable=False, drop_documents=False, flag_inverted=True, drop_inverted=True,
                             quality_run=quality_run)
    results = [apply_exclusions(m, config) for m in manifests]
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "quality_exclusions.csv") as tmp:
        pd.concat([r.report.assign(manifest=i) for i, r in enumerate(results)]).to_csv(tmp, index=False)
    return [r.kept for r in results]


def check_balancing(recipe: Recipe) -> None:
    """Refuse, before any work, a balancing strategy the recipe's stages cannot carry out."""
    tr = recipe.train
    get_balancer(tr.balancing).check_stages(len(tr.stages))
    if tr.double_balanced_fraction != 0.5:
        raise ConfigError(f"train.double_balanced_fraction={tr.double_balanced_fraction}: retired; double-stage "
                          "sampling balances the whole first stage and trains later stages on all data")


def _progress(show: bool):
    if not show:
        return None
    from cxrlab.cli._common import progress  # the one progress style; imported lazily (library stays CLI-free)

    return progress()


@restores_torch_threads
def train(recipe: Recipe | str | os.PathLike, data: Sequence[str | os.PathLike | Manifest] | str | Manifest,
          out: str | os.PathLike, resume: bool = False, overrides: Sequence[str] = (), show_progress: bool = True,
          on_epoch_end: EpochCallback | None = None, split: str | os.PathLike | None = None,
          lung_model: str | os.PathLike | None = None, mask_cache: str | os.PathLike | None = None) -> Path:
    """Train ``recipe`` on ``data`` (manifest paths or Manifests; the first is split, see ``data.extra``) into
    the run directory ``out``; ``resume=True`` continues an interrupted run from ``checkpoints/last.pt``.

    ``split``: a split table (``cxrlab data split``) to use instead of the recipe's split: every primary image
    must be in it, patients disjoint. ``lung_model``: a lung segmentation run that predicts the lung masks of
    images without them, once, cached in ``mask_cache`` (default ``RUN/lung_masks/``; give the folds of a
    cross-validation one shared folder so each film is segmented once; see :mod:`cxrlab.train.masks`)."""
    run_dir = Path(out)
    last = run_dir / "checkpoints" / "last.pt"
    payload = None
    if resume:
        if not last.is_file():
            raise InputError(run_dir, "nothing to resume: no checkpoints/last.pt")
        remove_stale_temps(run_dir)  # what a kill mid-write left; the files they were to replace are intact
        payload = load_checkpoint(last, required=("model", "state", "rng", "recipe"))  # damaged: an InputError
        recipe = load_recipe(payload["recipe"])  # the run's own resolved recipe is authoritative
    else:
        if last.is_file():
            raise ConfigError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
        recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    check_balancing(recipe)
    if recipe.tracking.mlflow:
        require_mlflow()  # fail before any work when the optional dependency is missing
    manifests = _as_manifests(data)
    if recipe.data.quality:
        manifests = _quality_filtered(manifests, recipe.data.quality, run_dir)
    torch.set_num_threads(recipe.train.threads)
    pipeline = InputPipeline(recipe.input)
    tasks = build_tasks(recipe, pipeline)
    if resume:
        split_file: Path | None = run_dir / "split.csv"
        given_split = pd.read_csv(split_file, dtype={schema.PATIENT_ID: str})
    else:
        split_file = Path(split) if split is not None else None
        given_split = load_split(split_file) if split_file is not None else None
    table, data_report = build_table(recipe, manifests, tasks, pipeline.per_image, given_split,
                                     split_source=split_file or "split.csv")
    run_dir.mkdir(parents=True, exist_ok=True)
    lung_report = None
    if resume and lung_model is None and (run_dir / "data_filter.json").is_file():  # the run's own lung model
        recorded = json.loads((run_dir / "data_filter.json").read_text()).get("lung_masks") or {}
        if recorded.get("lung_run"):
            lung_model, mask_cache = recorded["lung_run"], Path(recorded["cache"]).parent
    if lung_model is not None and pipeline.needs_masks:
        from cxrlab.train.masks import fill_lung_masks

        filled, lung_report = fill_lung_masks(table.df, lung_model,
                                              Path(mask_cache) if mask_cache is not None else run_dir / "lung_masks")
        table.df = filled
    if not resume:
        data_report["split_source"] = str(split_file.resolve()) if split_file is not None else "recipe"
        data_report["lung_masks"] = lung_report
        atomic_write_json(run_dir / "data_filter.json", _finite(data_report))
    elif lung_report is not None:
        atomic_write_json(run_dir / "lung_masks" / "resume_report.json", lung_report)
    if not resume:
        save_recipe(recipe, run_dir / "recipe.yaml")
        save_split(table.df, run_dir / "split.csv")
    model, report = build_model(recipe, tasks, pipeline)
    entry = get_backbone_entry(recipe.model.backbone)
    atomic_write_json(run_dir / "weights_report.json", report.to_dict() if report else {"source": "none"})
    atomic_write_json(run_dir / "model.json", {
        **entry.contract(pipeline.in_chans, recipe.model.weights, recipe.input.size), "roi": recipe.input.roi,
        "per_image": pipeline.per_image, "heads": {k: str(v) for k, v in model.heads.items()},
        **({"patches": pipeline.patches.model_dump()} if pipeline.patches is not None else {}),
        "tasks": tasks.config()})
    state = TrainState()
    if payload is not None:
        model.load_state_dict(payload["model"])
        state = TrainState(**payload["state"])
        torch.set_rng_state(payload["rng"]["torch"])
        np.random.set_state(payload["rng"]["numpy"])
        random.setstate(payload["rng"]["python"])
    progress = _progress(show_progress)
    cache_dir = Path(recipe.train.cache_dir) if recipe.train.cache_dir else cxrlab_home() / "cache"
    with (progress if progress is not None else contextlib.nullcontext()), \
            track_run(recipe, run_dir, resume=resume, step=len(state.history)) as tracker:
        task = progress.add_task("preparing images", total=len(table.df), status="") if progress else None
        rows = prepare_inputs(table.df, pipeline, cache_dir, recipe.train.num_workers,
                              (lambda d, t: progress.update(task, completed=d, total=t)) if progress else None)
        inputs = rows.reshape(-1, *rows.shape[2:])  # (rows·per_image, C, H, W): item i = row i // per_image
        callbacks = ([tracker.on_epoch_end] if tracker else []) + ([on_epoch_end] if on_epoch_end else [])
        trainer = Trainer(recipe, table, tasks, pipeline, inputs, model, run_dir, show_progress, _chain(callbacks))
        if payload is not None:
            trainer._write_history(state)  # the checkpoint's epochs: rows logged after it are trained again
        t0 = time.perf_counter()
        plan = trainer.fit(state, payload, progress)
        train_seconds = time.perf_counter() - t0
        _finish(trainer, plan, data_report, train_seconds, lung_report)
    return run_dir


def _finish(trainer: Trainer, plan: StagePlan | None, data_report: dict[str, Any], train_seconds: float,
            lung_report: dict[str, Any] | None = None) -> None:
    """Predictions for every item with the best weights; metrics per split; written atomically."""
    table, tasks = trainer.table, trainer.tasks
    all_items = np.arange(len(table.item_row))
    use = plan if plan is not None and plan.cached else None
    logits, _ = trainer.predict_items(all_items, use)
    decoded = trainer._decode(logits, all_items)
    df = table.df
    pred = pd.DataFrame({c: df[c].to_numpy() for c in [schema.IMAGE, schema.PATIENT_ID, SPLIT] if c in df.columns})
    for c in (schema.SOURCE_DATASET, schema.VIEW, TRAIN_ONLY):  # view: the evaluation's view-confound check
        if c in df.columns:
            pred[c.lstrip("_")] = df[c].to_numpy()
    for c in tasks.columns:
        pred[c] = df[c].to_numpy()
    for k, v in decoded.items():
        pred[k] = v
    with atomic_path(trainer.run_dir / "predictions.parquet") as tmp:
        pred.to_parquet(tmp, index=False)
    metrics: dict[str, Any] = {}
    for part in ("train", "val", "test"):
        rows = np.flatnonzero(df[SPLIT].to_numpy() == part)
        if len(rows):
            metrics[part] = tasks.metrics(table.row_targets[rows], {k: v[rows] for k, v in decoded.items()})
    history = trainer.run_dir / "history.csv"
    hist = pd.read_csv(history) if history.is_file() else pd.DataFrame()
    metrics["run"] = {
        "epochs": int(len(hist)), "best_val_loss": float(hist["val_loss"].min()) if len(hist) else None,
        "rows": int(len(df)), "rows_without_target": data_report["rows_without_target"],
        "rows_removed_by_event_filter": data_report.get("rows_removed", 0),
        "before_event": {k: data_report.get(k) for k in ("removed", "not_applied") if k in data_report} or None,
        "train_only_dropped": data_report["train_only_dropped"],
        "lung_masks": None if lung_report is None else {k: lung_report[k] for k in
                                                        ("lung_run", "predicted", "from_cache", "given")},
        "items": int(len(all_items)),
        "precision": trainer.precision, "channels_last": trainer.channels_last,
        "train_seconds_this_call": round(train_seconds, 2), "seed": trainer.recipe.seed,
        "software": software_versions(),
    }
    atomic_write_json(trainer.run_dir / "metrics.json", _finite(metrics))


def _finite(obj: Any) -> Any:
    """NaN → null (valid JSON; 'undefined' metrics such as an AUC without positives)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
