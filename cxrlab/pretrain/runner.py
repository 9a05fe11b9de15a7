"""``pretrain(cfg, manifests, out)``: train a backbone on the pooled manifests; checkpointed, exactly resumable.

Run directory::

    config.yaml        the resolved config
    seen.csv           every image the run saw (image, patient_id, source_dataset, manifest, labels used)
    pool.json          sources, patients and images per source, exclusions, heads and their classes
    history.csv        one line per logged step (losses, images/s)
    checkpoints/last.pt  model + optimiser + scheduler + step (atomic, every ``checkpoint_every`` steps)
    backbone.pt        the finished backbone (``Backbone.net`` weights + preprocessing contract)
    contract.json      the preprocessing contract (backbone, channels, size, mean, std) and timing

The batch order is a permutation per epoch from the seed and the views of step ``t`` come from a generator
seeded with ``(seed, t)``, so a run resumed from a checkpoint takes exactly the steps an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import yaml

from cxrlab.errors import ConfigError, InputError
from cxrlab.machine import load_average, machine_info
from cxrlab.pretrain import losses as L
from cxrlab.pretrain.config import PretrainConfig
from cxrlab.pretrain.data import Pool, build_pool, cache_arrays, seen_table
from cxrlab.pretrain.model import SEG_STRIDE, PretrainNet
from cxrlab.utils import atomic_path, atomic_write_json, atomic_write_text, seed_everything
from cxrlab.machine import restores_torch_threads

BACKBONE_FILE = "backbone.pt"
CONTRACT_FILE = "contract.json"
SEEN_FILE = "seen.csv"


def _bf16(cfg: PretrainConfig) -> bool:
    if cfg.bf16 == "off":
        return False
    from cxrlab.export.backends import bf16_supported

    ok = bf16_supported()
    if cfg.bf16 == "on" and not ok:
        raise ConfigError("bf16: on, but this CPU has no native bf16 (avx512_bf16/amx); use bf16: auto or off")
    return ok


class _Views:
    """lightly's SimCLR view transform on uint8 arrays, driven by a per-step generator (exact resume)."""

    def __init__(self, cfg: PretrainConfig):
        from lightly.transforms import SimCLRTransform

        s = cfg.objectives.ssl
        self.transform = SimCLRTransform(input_size=cfg.size, cj_prob=s.cj_prob, cj_strength=s.cj_strength,
                                         cj_hue=0.0, cj_sat=0.0, min_scale=s.min_scale, random_gray_scale=0.0,
                                         gaussian_blur=s.blur_prob, hf_prob=s.hflip_prob, rr_prob=0.0,
                                         normalize=None)

    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        pairs = [self.transform(Image.fromarray(im)) for im in images]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _lr_lambda(cfg: PretrainConfig, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _save_checkpoint(path: Path, net, opt, sched, step: int, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "history": history}, tmp)


@restores_torch_threads
def pretrain(cfg: PretrainConfig, manifests: list[str | Path], out: str | Path, *, resume: bool = False,
             exclude_patients_of: list[str | Path] = (), exclude_sources: list[str] = (),
             log: Callable[[str], None] = print, stop_after: int | None = None) -> Path:
    """Run (or ``resume``) a pretraining run into ``out``; returns ``out``. ``stop_after``: stop after that many
    steps in total (as if interrupted; used by tests of resume)."""
    out = Path(out)
    ckpt = out / "checkpoints" / "last.pt"
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(out, "run directory exists and is not empty (use --resume to continue it, or a new --out)")
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise InputError(out, "nothing to resume: no config.yaml (not a pretraining run directory)")
        if PretrainConfig.model_validate(yaml.safe_load(saved.read_text())) != cfg:
            raise ConfigError(f"{saved}: the config differs from the one this run started with; resume with the "
                              "same config (or start a new --out)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    pool = build_pool(cfg, manifests, exclude_patients_of, exclude_sources)
    seen = seen_table(pool)
    if resume and (out / SEEN_FILE).is_file():
        before = pd.read_csv(out / SEEN_FILE, dtype=str, keep_default_na=False)
        if before["image"].tolist() != seen["image"].tolist():
            raise ConfigError(f"{out / SEEN_FILE}: the data or exclusions differ from the run's start; resume with "
                              "the same --data / --exclude-* arguments")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    with atomic_path(out / SEEN_FILE) as tmp:
        seen.to_csv(tmp, index=False)
    summary = {
        "images": len(seen), "patients": int(seen["patient_id"].nunique()),
        "sources": {s: {"images": int((seen.source_dataset == s).sum()),
                        "patients": int(seen.loc[seen.source_dataset == s, "patient_id"].nunique())}
                    for s in sorted(seen.source_dataset.unique())},
        "manifests": [str(m) for m in manifests], "exclude_patients_of": [str(m) for m in exclude_patients_of],
        "exclude_sources": list(exclude_sources), "excluded": pool.excluded, "heads": pool.heads,
        "views": pool.views, "masks": pool.masks}
    atomic_write_json(out / "pool.json", summary)
    log(f"pool: {len(seen)} images, {summary['patients']} patients, sources "
        + ", ".join(f"{s[:28]}={v['images']}" for s, v in summary["sources"].items())
        + (f"; excluded {pool.excluded}" if pool.excluded else ""))
    t_cache = time.time()
    arrays = cache_arrays(pool, cfg.size, cfg.size // SEG_STRIDE, out / "cache" / "arrays.npz", log)
    log(f"images ready ({time.time() - t_cache:.0f}s)")

    net = PretrainNet(cfg, pool.heads, pool.views, pool.masks)
    bf16 = _bf16(cfg)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(pool.df)
    per_epoch = max(1, n // cfg.batch_size)  # drop the last partial batch (BatchNorm / contrastive pairs)
    total = max(1, int(round(cfg.epochs * per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    step, history = 0, []
    if resume and ckpt.is_file():
        from cxrlab.models.weights import load_checkpoint

        state = load_checkpoint(ckpt, required=("model", "optimizer", "scheduler", "step"))
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, history = int(state["step"]), list(state.get("history", []))
        log(f"resumed at step {step}/{total}")
    if step >= total and (out / BACKBONE_FILE).is_file():
        log("run already complete")
        return out

    sup, ssl = cfg.objectives.supervised, cfg.objectives.ssl
    views = _Views(cfg) if ssl.enabled else None
    ntx = None
    if ssl.enabled:
        from lightly.loss import NTXentLoss

        ntx = NTXentLoss(temperature=ssl.temperature)
    images = arrays["images"]
    masks_t = torch.from_numpy(arrays["masks"])
    have_t = torch.from_numpy(arrays["have"])
    head_t = torch.from_numpy(pool.df["_head"].to_numpy(np.int64).copy())
    diag_t = torch.from_numpy(pool.df["_diag"].to_numpy(np.int64).copy())
    view_t = torch.from_numpy(pool.df["_view"].to_numpy(np.int64).copy())
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    log(f"training {total} steps ({cfg.epochs} epochs x {per_epoch}), batch {cfg.batch_size}, size {cfg.size}, "
        f"bf16 {bf16}, channels_last {cfg.channels_last}, threads {torch.get_num_threads()}, objectives: "
        + ", ".join(k for k, on in (("supervised", sup.enabled), ("ssl-" + ssl.method, ssl.enabled)) if on))
    net.train()
    t0, images_done, window = time.time(), 0, []
    while step < total:
        epoch, b = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        idx_t = torch.from_numpy(idx)
        parts: dict[str, torch.Tensor] = {}
        seed_everything(cfg.seed * 1_000_003 + step)  # this step's views / dropout (torch, numpy, random)
        with autocast():
            if sup.enabled:
                x = torch.from_numpy(images[idx]).float().div_(255).unsqueeze(1).contiguous(memory_format=fmt)
                o = net.supervised(x)
                d = L.masked_head_ce(o["diag"], head_t[idx_t], diag_t[idx_t])
                if d is not None:
                    parts["diagnosis"] = d
                if o["view"] is not None:
                    v = L.masked_ce(o["view"], view_t[idx_t])
                    if v is not None:
                        parts["view"] = v * sup.view_weight
                if o["seg"] is not None:
                    s = L.masked_bce_maps(o["seg"], masks_t[idx_t].float().div(255), have_t[idx_t])
                    if s is not None:
                        parts["masks"] = s * sup.mask_weight
                for k in list(parts):
                    parts[k] = parts[k] * sup.weight
            if ssl.enabled:
                v1, v2 = views(images[idx])
                both = torch.cat([v1, v2]).contiguous(memory_format=fmt)
                z = net.project(both).float()
                parts["ssl"] = ntx(z[:len(idx)], z[len(idx):]) * ssl.weight
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        images_done += len(idx)
        window.append({k: float(v.detach()) for k, v in parts.items()} | {"loss": float(loss.detach())})
        if step % cfg.log_every == 0 or step == total:
            rate = images_done / max(1e-9, time.time() - t0)
            mean = {k: float(np.mean([w.get(k, np.nan) for w in window])) for k in window[-1]}
            history.append({"step": step, "epoch": round(step / per_epoch, 3), **mean, "images_per_s": rate,
                            "lr": sched.get_last_lr()[0]})
            window = []
            log(f"step {step}/{total} epoch {step / per_epoch:.2f} " + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                + f" | {rate:.1f} img/s load {load_average()[0]}")
        if step % cfg.checkpoint_every == 0 or step == total:
            _save_checkpoint(ckpt, net, opt, sched, step, history)
        if stop_after is not None and step >= stop_after and step < total:
            log(f"stopped after step {step} (resume with --resume)")
            return out
    with atomic_path(out / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    net = net.to(memory_format=torch.contiguous_format)
    contract = dict(net.contract)
    contract["weights"] = f"run:{out}"
    contract["started_from"] = cfg.weights
    info = {"contract": contract, "steps": total, "images_seen": total * cfg.batch_size,
            "train_seconds_this_sitting": round(time.time() - t0, 1),
            "images_per_s_this_sitting": round(images_done / max(1e-9, time.time() - t0), 2),
            "bf16": bf16, "machine": machine_info(), "load_average": load_average(),
            "final": history[-1] if history else {}}
    with atomic_path(out / BACKBONE_FILE) as tmp:
        torch.save({"backbone": cfg.backbone, "state_dict": net.backbone_state(), "contract": contract}, tmp)
    atomic_write_json(out / CONTRACT_FILE, info)
    log(f"done: {out / BACKBONE_FILE}")
    return out
