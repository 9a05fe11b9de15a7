"""``train_segmentation(config) -> run_dir``: Dice + BCE (or ``loss``: Dice, Tversky, focal), patient-level
split, group-balanced draws, early stopping, resume.

Run directory: ``recipe.yaml`` (the resolved config, incl. seed), ``split.csv``, ``checkpoints/{last,best}.pt``
(written atomically every epoch), ``history.csv``, ``metrics.json`` (held-out test set, per source and
structure) and ``predictions.parquet`` (per-image test metrics).
"""

from __future__ import annotations

import math
import platform
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from cxrlab.anatomy.architectures import create_segmentation_model
from cxrlab.anatomy.config import SegmentationConfig, convention_channel, load_config
from cxrlab.anatomy.data import (SegmentationDataset, assign_split, balanced_draw, balanced_subset, build_cache,
                                 load_table)
from cxrlab.anatomy.evaluate import evaluate_segmenter
from cxrlab.anatomy.losses import DiceBCELoss, build_loss  # noqa: F401  (DiceBCELoss: public here since v1)
from cxrlab.anatomy.predict import LungSegmenter, autocast, load_checkpoint, resolve_device, resolve_precision
from cxrlab.data import schema
from cxrlab.data.splits import save_split
from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temps, seed_everything
from cxrlab.versions import software_versions
from cxrlab.machine import restores_torch_threads

Progress = Callable[[str, int, int, str], None]


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with atomic_path(run_dir / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def early_stopping_step(val: float, best: float, best_saved: float, min_delta: float) -> tuple[bool, bool]:
    """``(progressed, better)``: progress (resets patience) needs a gain above ``min_delta`` over the patience
    reference; the best checkpoint is replaced on any gain, so a small real improvement is never thrown away."""
    return val > best + min_delta, val > best_saved


def _load_init(model: nn.Module, cfg: SegmentationConfig) -> None:
    """Model weights of another run (fine-tuning); the architectures must match exactly."""
    path = Path(cfg.init_from)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    state = load_checkpoint(path)
    misfit = f"init_from {path}: its weights do not fit this run's model ({cfg.arch}/{cfg.encoder}, " \
             f"{len(cfg.channels)} output channels)"
    try:
        result = model.load_state_dict(state.get("model", state), strict=False)
    except RuntimeError as exc:  # same names, other shapes (e.g. another number of targets)
        raise ConfigError(f"{misfit}: {str(exc).strip().splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"{misfit}: {len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected "
                          f"keys, e.g. {(result.missing_keys or result.unexpected_keys)[0]}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def _resolved_recipe(cfg: SegmentationConfig, precision: str, device: torch.device) -> str:
    data = cfg.model_dump(mode="json")
    header = (f"# cxrlab segmentation run; resolved config. precision used: {precision}; torch {torch.__version__};"
              f" device {_device_name(device)}\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def scored_channels(ds: SegmentationDataset) -> list[np.ndarray]:
    """Per item of ``ds``, the output channels its lung Dice is measured on: its convention's right/left lungs
    when it has one, else the shared lung channels (all channels for a model without lungs)."""
    cfg = ds.cfg
    shared = np.flatnonzero(ds.lung_channels) if ds.lung_channels.any() else np.arange(len(cfg.targets))
    own = [np.array([cfg.channels.index(convention_channel(side, name))
                     for side in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG)]) for name in cfg.lung_conventions]
    return [shared if j < 0 else own[j] for j in ds.image_convention[ds.indices]]


def selection_score(dice: np.ndarray, sources: np.ndarray, selection: str) -> float:
    """Per-image Dice → the number checkpoints are chosen by (see ``SegmentationConfig.selection``)."""
    ok = ~np.isnan(dice)
    if not ok.any():
        return float("nan")
    if selection == "pooled":
        return float(dice[ok].mean())
    return float(np.mean([dice[ok & (sources == s)].mean() for s in sorted(set(sources[ok]))]))


def _to(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, precision: str, threshold: float,
              channels: list[np.ndarray], sources: np.ndarray, selection: str,
              device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """Mean loss and the selection score of hard lung Dice (supervised pixels only, letterboxed canvas)."""
    model.eval()
    losses, dices = [], []
    for batch in loader:
        x, y, w = _to(batch, device)
        with autocast(precision, device):
            logits = model(x)
        losses.append(float(loss_fn(logits, y, w)) * len(x))
        pred = (torch.sigmoid(logits.float()) >= threshold).float()
        inter = (pred * y * w).sum(dim=(2, 3))
        denom = (pred * w).sum(dim=(2, 3)) + (y * w).sum(dim=(2, 3))
        dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-6), torch.ones_like(denom)).cpu().numpy()
        supervised = (w.sum(dim=(2, 3)) > 0).cpu().numpy()
        for k in range(len(x)):
            chans = channels[len(dices)]
            chans = chans[supervised[k, chans]]
            dices.append(float(dice[k, chans].mean()) if len(chans) else float("nan"))
    n = len(loader.dataset)
    return sum(losses) / max(n, 1), selection_score(np.array(dices), sources, selection)


@restores_torch_threads
def train_segmentation(config: SegmentationConfig | dict | str | Path, out: str | Path | None = None,
                       resume: bool = False, progress: Progress | None = None) -> Path:
    """Train a segmentation model; returns the run directory. ``progress(stage, done, total, status)``."""
    cfg = load_config(config)
    run_dir = Path(out if out is not None else cfg.out)
    if out is not None:
        cfg = cfg.model_copy(update={"out": str(run_dir)})
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if last_path.exists() and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another --out")
    if resume and not last_path.exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    if resume:
        saved = load_config(run_dir / "recipe.yaml")
        free = {"epochs", "out", "device", "num_workers"}  # what may differ on resume (the run is the same)
        if saved.model_dump(exclude=free) != cfg.model_dump(exclude=free):
            raise ConfigError(f"{run_dir}: --resume needs the run's own config (only 'epochs', 'device' and "
                              "'num_workers' may change)")
        remove_stale_temps(run_dir)  # what a kill mid-write left; the files they were to replace are intact
    report = progress or (lambda *a: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest convolution once
    seed_everything(cfg.seed)

    df = assign_split(load_table(cfg), cfg)
    if cfg.weights.startswith("run:"):  # refused before anything is written
        from cxrlab.pretrain.guard import check_pretrain_overlap

        check_pretrain_overlap(cfg.weights, df, "split", allow=cfg.allow_pretrain_overlap,
                               allow_key="allow_pretrain_overlap")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", _resolved_recipe(cfg, precision, device))
    save_split(df, run_dir / "split.csv")

    work = df[df["split"].isin(["train", "val"])].reset_index(drop=True)
    cache = build_cache(work, cfg, on_item=lambda i, n: report("load", i, n, "reading images"))
    train_idx = np.flatnonzero(work["split"].to_numpy() == "train")
    val_idx = np.flatnonzero(work["split"].to_numpy() == "val")
    if len(train_idx) == 0:
        raise ConfigError("the split left no training images")
    if cfg.val_max_images and len(val_idx) > cfg.val_max_images:
        val_idx = val_idx[balanced_subset(cache.groups[val_idx], cfg.val_max_images,
                                          np.random.default_rng(cfg.seed))]
    train_ds = SegmentationDataset(cache, train_idx, cfg, train=True)
    val_ds = SegmentationDataset(cache, val_idx if len(val_idx) else train_idx[:1], cfg, train=False)
    val_channels, val_sources = scored_channels(val_ds), cache.groups[val_ds.indices]
    # A target no training image has (the heart when training on V7/COVID-QU-Ex only) is never learned: the
    # run records which targets (and conventions) were supervised and its segmenter outputs only those.
    supervised = [c for c, v in zip(cfg.targets, cache.valid[train_idx].any(axis=0)) if v]
    trained_conventions = {cfg.convention_of(str(s)) for s in cache.sources[train_idx]}
    supervised += [c for name in cfg.lung_conventions if name in trained_conventions
                   for c in (convention_channel(schema.MASK_RIGHT_LUNG, name),
                             convention_channel(schema.MASK_LEFT_LUNG, name))]
    loader_options = {"num_workers": cfg.num_workers, "pin_memory": device.type == "cuda"}
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, **loader_options)

    model = create_segmentation_model(cfg.arch, cfg.encoder, cfg.weights, cfg.in_channels, len(cfg.channels),
                                      **cfg.arch_kwargs)
    if cfg.init_from and not resume:
        _load_init(model, cfg)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.02)
    loss_fn = build_loss(cfg.loss)
    history: list[dict[str, Any]] = []
    # ``best`` is the reference early stopping measures progress against (moves only by > min_delta);
    # ``best_saved`` is the val Dice of checkpoints/best.pt (any improvement is kept).
    start_epoch, best, best_saved, stale = 0, -math.inf, -math.inf, 0
    if resume:
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])  # moves its moments to the parameters' device
        sched.load_state_dict(state["scheduler"])
        sched.T_max = cfg.epochs
        start_epoch, best, stale, history = state["epoch"] + 1, state["best"], state["stale"], state["history"]
        best_saved = state.get("best_saved", best)
        torch.set_rng_state(state["torch_rng"])
        if "numpy_rng" in state:  # checkpoints of older versions carry the torch state only
            np.random.set_state(state["numpy_rng"])
            random.setstate(state["python_rng"])
        _write_history(run_dir, history)  # the checkpoint's epochs: rows logged after it are trained again

    per_epoch = cfg.samples_per_epoch or len(train_idx)
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        positions = balanced_draw(cache.groups[train_idx], per_epoch, rng, cfg.source_weights) \
            if cfg.samples_per_epoch \
            else rng.permutation(len(train_idx))
        train_ds.epoch = epoch
        loader = DataLoader(torch.utils.data.Subset(train_ds, positions.tolist()), batch_size=cfg.batch_size,
                            shuffle=False, drop_last=len(positions) > cfg.batch_size, **loader_options)
        model.train()
        total, seen = 0.0, 0
        for b, batch in enumerate(loader):
            x, y, w = _to(batch, device)
            with autocast(precision, device):
                logits = model(x)
            loss = loss_fn(logits, y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
            report("train", b + 1, len(loader), f"epoch {epoch + 1}/{cfg.epochs} loss {total / seen:.4f}")
        train_time = time.perf_counter() - t0
        sched.step()
        val_loss, val_dice = _validate(model, val_loader, loss_fn, precision, cfg.threshold, val_channels,
                                       val_sources, cfg.selection, device)
        progressed, better = early_stopping_step(val_dice, best, best_saved, cfg.min_delta)
        best, stale = (val_dice, 0) if progressed else (best, stale + 1)
        best_saved = max(best_saved, val_dice)
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                        "val_dice": val_dice, "lr": opt.param_groups[0]["lr"], "train_seconds": train_time,
                        "train_images_per_s": seen / train_time, "epoch_seconds": time.perf_counter() - t0,
                        "precision": precision, "device": device.type})
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "best": best, "best_saved": best_saved, "stale": stale, "history": history,
                 "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                 "python_rng": random.getstate(), "config": cfg.model_dump(mode="json"),
                 "supervised_targets": supervised}
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if better or not (ckpt_dir / "best.pt").exists():
            _save_atomic(state, ckpt_dir / "best.pt")
        _save_atomic(state, last_path)
        _write_history(run_dir, history)
        report("epoch", epoch + 1, cfg.epochs, f"val dice {val_dice:.4f} (best {best_saved:.4f})")

    metrics: dict[str, Any] = {"best_val_dice": best_saved, "selection": cfg.selection, "epochs_run": len(history),
                               "precision": precision, "device": _device_name(device),
                               "supervised_targets": supervised, "software": software_versions(),
                               "n_images": {k: int(v) for k, v in df["split"].value_counts().items()}}
    test = df[df["split"] == "test"].reset_index(drop=True)
    if cfg.evaluate_test and len(test):
        seg = LungSegmenter.from_run(run_dir, "best", precision)
        # "test": each source in its own annotators' convention (its convention channels where it has one);
        # "test_shared": the shared channels for every source (what an unseen hospital's films get by default).
        runs = [("test", "source", "predictions.parquet")]
        if cfg.lung_conventions:
            runs.append(("test_shared", None, "predictions_shared.parquet"))
        for key, convention, filename in runs:
            table, summary = evaluate_segmenter(seg, test, batch_size=cfg.batch_size, convention=convention,
                                                on_item=lambda i, n: report(key, i, n, "evaluating"))
            metrics[key] = summary
            with atomic_path(run_dir / filename) as tmp:
                table.to_parquet(tmp, index=False)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return run_dir


