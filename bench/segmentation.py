"""Lung segmentation benchmark on the shared mask data (JSRT/SCR, V7 masks of ieee8023, COVID-QU-Ex lungs).

    python bench/segmentation.py train    --out runs/lung_bench        # the lung model other stages use
    python bench/segmentation.py finetune --out runs/lung_bench_ft     # a candidate second stage
    python bench/segmentation.py select   --runs runs/lung_bench runs/lung_bench_ft   # chosen on val only
    python bench/segmentation.py cross  --train-source covid_qu_ex --out runs/lung_cross_qu
    python bench/segmentation.py speed  --run runs/lung_bench           # GEMM peak, end-to-end img/s
    python bench/segmentation.py report --run runs/lung_bench           # -> docs/benchmarks/anatomy.md

Results land in ``bench/results/`` (git-ignored) and the run directories under ``runs/``; nothing derived
from the data is written into the repository except the figures in the Markdown report.
"""

from __future__ import annotations

import argparse
import fnmatch
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrlab.anatomy import LungSegmenter, evaluate_segmenter, load_config, train_segmentation
from cxrlab.anatomy.data import assign_split, load_table
from cxrlab.data import schema
from cxrlab.data.splits import save_split
from cxrlab.io import read_image, write_png
from cxrlab.machine import count_flops, gemm_peak, machine_info

DATA = Path(os.environ.get("CXRLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCES = {
    "jsrt_scr": DATA / "jsrt_scr_lung_masks",
    "v7_ieee8023": DATA / "ieee8023_covid_chestxray",
    "covid_qu_ex": DATA / "covid_qu_ex_infection_seg",
}
# The V7 masks of ieee8023 sit in their own columns; map them onto the canonical ones.
COLUMN_MAP = {"mask_v7_lungs": schema.MASK_LUNGS, "mask_v7_right_lung": schema.MASK_RIGHT_LUNG,
              "mask_v7_left_lung": schema.MASK_LEFT_LUNG}
SOURCE_PATTERNS = {"jsrt_scr": "JSRT*", "v7_ieee8023": "ieee8023*", "covid_qu_ex": "COVID-QU-Ex*"}
RESULTS = Path(__file__).resolve().parent / "results"

# Budgeted for a quiet 2-core CPU (~1 h): 128 px (`resolution` below: truth masks taken down to 128 px and back
# lose almost no Dice on any source, so resolution is not the limit; iterations are), ImageNet Lite0 encoder, a slim
# U-Net decoder, a source-balanced draw of images per epoch so JSRT (the only heart masks) is a third of it.
# One lung convention per source: the cross-source runs (`cross`) showed that a model trained on COVID-QU-Ex and
# one trained on V7 each score ~0.86 on the other's masks, i.e. their annotators draw different lungs, and one
# set of lung channels trained on both fits neither. Each source gets its own right/left lung channels besides
# the shared ones; the last decoder stage is 16 wide (not 8) to feed 9 output maps. Checkpoints are chosen by the
# source-macro val Dice in each source's own convention, on a val sample balanced over sources.
BENCH_CONVENTIONS = {"scr": ["JSRT*"], "v7": ["ieee8023*"], "covid_qu_ex": ["COVID-QU-Ex*"]}
BENCH_CONFIG = {
    "name": "lung_bench", "arch": "unet", "encoder": "efficientnet_lite0", "weights": "imagenet",
    "arch_kwargs": {"decoder_channels": [96, 48, 24, 16, 16]}, "size": 128,
    "manifests": [str(p) for p in SOURCES.values()], "column_map": COLUMN_MAP,
    "lung_conventions": BENCH_CONVENTIONS, "selection": "source_macro",
    "epochs": 50, "samples_per_epoch": 1500, "batch_size": 12, "lr": 2e-3, "val_max_images": 150,
    "patience": 12, "seed": 0, "precision": "auto", "threads": 2,
}


# A candidate second stage: fine-tune the benchmark run at a lower, restarted learning rate, with the per-epoch
# draw tilted towards the diseased sources (COVID-QU-Ex, V7) whose hard, opacified lungs limit the mean Dice.
# `select` then chooses between the runs on the validation parts only (see cmd_select).
FINETUNE_CONFIG = {
    "name": "lung_bench_ft", "init_from": "runs/lung_bench", "lr": 4e-4, "epochs": 20, "patience": 20,
    "source_weights": {"COVID-QU-Ex*": 0.45, "ieee8023*": 0.35, "JSRT*": 0.2},
}


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


def progress_logger(every: int = 4):
    def report(stage: str, done: int, total: int, status: str) -> None:
        if done == total or done % (every * 50 if stage in ("load", "test") else every) == 0:
            log(f"{stage} {done}/{total} {status}")
    return report


def machine() -> dict:
    return {"cpu": machine_info()["cpu"], "cores": os.cpu_count(),
            "date_utc": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}",
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def cmd_train(args: argparse.Namespace) -> None:
    cfg = load_config(BENCH_CONFIG, args.set)
    log(f"machine {machine()}")
    run = train_segmentation(cfg, out=args.out, resume=args.resume, progress=progress_logger())
    log(f"done: {run}  load {machine()['uptime']}")


# Cross-source runs train on one source only, for a shorter budget than the main run (three of them must fit
# the same hour); override with --set. They measure how far the sources' annotations disagree, so they keep the
# architecture they were first run with (last decoder stage 8 wide, no convention channels: one source has one
# convention).
CROSS_BUDGET = {"epochs": 12, "samples_per_epoch": 600, "arch_kwargs": {"decoder_channels": [96, 48, 24, 16, 8]},
                "lung_conventions": {}}


def cmd_finetune(args: argparse.Namespace) -> None:
    cfg = load_config({**BENCH_CONFIG, **FINETUNE_CONFIG}, args.set)
    log(f"machine {machine()}")
    run = train_segmentation(cfg, out=args.out, resume=args.resume, progress=progress_logger())
    log(f"done: {run}  load {machine()['uptime']}")


def _lung_dice_by_source(summary: dict) -> dict[str, float]:
    return {src: s["lungs"]["dice_mean"] for src, s in summary["by_source"].items() if "lungs" in s}


def cmd_select(args: argparse.Namespace) -> None:
    """Choose among candidate runs on the validation parts only: the highest source-macro mean lung Dice (each
    source counts once, whatever its size; pooling images would let COVID-QU-Ex, 80 % of them, decide alone).
    Test figures are computed for every candidate and shown beside, never used to choose."""
    rows = []
    for run in args.runs:
        seg = LungSegmenter.from_run(run)
        df = assign_split(load_table(seg.config), seg.config)
        row = {"run": run, "epochs": len(pd.read_csv(Path(run) / "history.csv"))}
        for part in ("val", "test"):
            rows_part = df[df["split"] == part].reset_index(drop=True)
            _, summary = evaluate_segmenter(seg, rows_part)   # each source in its own convention
            row[part] = _lung_dice_by_source(summary)
            row[f"{part}_macro"] = float(np.mean(list(row[part].values())))
            if seg.conventions:  # shown beside, not used to choose: what films of unknown convention get
                _, shared = evaluate_segmenter(seg, rows_part, convention=None)
                row[f"{part}_shared"] = _lung_dice_by_source(shared)
        log(f"{run}: val macro {row['val_macro']:.4f} {row['val']}")
        rows.append(row)
    chosen = max(rows, key=lambda r: r["val_macro"])
    out = RESULTS / "segmentation_selection.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"criterion": "val source-macro mean lung Dice (each source scored in its own "
                                            "convention: a run's convention channels where it has them)",
                               "chosen": chosen["run"], "candidates": rows,
                               "default_output": _default_output(chosen["run"]), "machine": machine()}, indent=2))
    log(f"chosen {chosen['run']}; wrote {out}")


def _default_output(run: str) -> dict | None:
    """For a run with convention channels: which output to give films whose convention is unknown. Every
    output (shared channels, each convention's) is scored on every source's val part; the best source-macro
    Dice is the default. Val only, like the choice of the run."""
    seg = LungSegmenter.from_run(run)
    if not seg.conventions:
        return None
    df = assign_split(load_table(seg.config), seg.config)
    val = df[df["split"] == "val"].reset_index(drop=True)
    scores = {}
    for output in [None, *seg.conventions]:
        _, summary = evaluate_segmenter(seg, val, convention=output)
        scores[output or "shared"] = _lung_dice_by_source(summary)
        log(f"{run} val, every source with output {output or 'shared'}: {scores[output or 'shared']}")
    macro = {k: float(np.mean(list(v.values()))) for k, v in scores.items()}
    return {"val_lung_dice": scores, "val_macro": macro, "best": max(macro, key=macro.get)}


def _main_split(out: Path) -> tuple[pd.DataFrame, Path]:
    """The main run's patient split of every source, saved as ``out/main_split.csv`` for a run on a subset of
    the sources to reuse (splitting the subset instead would draw another split)."""
    all_cfg = load_config(BENCH_CONFIG)
    df = assign_split(load_table(all_cfg), all_cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_split(df, out / "main_split.csv")
    return df, out / "main_split.csv"


def cmd_cross(args: argparse.Namespace) -> None:
    """Train on one source only (its own patient-level train part), test on every source's test part.

    The split is the main run's: the split of the whole table is computed once and saved into the run, and the
    single-source run reuses it (``split.split_csv``). Splitting the filtered table instead would draw a
    different split (the per-source permutations share one random stream), putting main-run test patients in
    this run's training part.
    """
    df, split_csv = _main_split(Path(args.out))
    out = Path(args.out)
    pattern = SOURCE_PATTERNS[args.train_source]
    cfg = load_config({**BENCH_CONFIG, **CROSS_BUDGET, "name": f"lung_only_{args.train_source}",
                       "sources": [pattern], "evaluate_test": False, "split": {"split_csv": str(split_csv)}},
                      args.set)
    log(f"machine {machine()}")
    run = train_segmentation(cfg, out=out, resume=args.resume, progress=progress_logger())
    trained = pd.read_csv(run / "split.csv")
    test = df[df["split"] == "test"].reset_index(drop=True)
    leaked = set(trained.loc[trained["split"] == "train", schema.PATIENT_ID].astype(str)) & set(
        test[schema.PATIENT_ID].astype(str))
    if leaked:
        raise SystemExit(f"cross-source run {run} trained on {len(leaked)} test patient(s), e.g. {sorted(leaked)[0]}")
    seg = LungSegmenter.from_run(run)
    table, summary = evaluate_segmenter(
        seg, test, on_item=lambda i, n: log(f"test {i}/{n}") if i == n or i % 96 == 0 else None)
    history = pd.read_csv(run / "history.csv")
    result = RESULTS / f"segmentation_cross_{args.train_source}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"train_source": args.train_source, "run": str(run), "test": summary,
                                  "epochs": len(history), "samples_per_epoch": cfg.samples_per_epoch,
                                  "train_minutes": float(history["epoch_seconds"].sum() / 60),
                                  "n_train_images": int((trained["split"] == "train").sum()),
                                  "machine": machine()}, indent=2))
    log(f"wrote {result}")


def _loso_config(held_out: str, split_csv: Path, overrides: list[str]):
    """The main run's recipe (conventions included) on the two other sources, at the cross-source budget."""
    pattern = SOURCE_PATTERNS[held_out]
    conventions = {k: v for k, v in BENCH_CONVENTIONS.items() if v != [pattern]}
    return load_config({**BENCH_CONFIG, "epochs": CROSS_BUDGET["epochs"],
                        "samples_per_epoch": CROSS_BUDGET["samples_per_epoch"], "name": f"lung_loso_{held_out}",
                        "sources": [p for k, p in SOURCE_PATTERNS.items() if k != held_out],
                        "lung_conventions": conventions, "evaluate_test": False,
                        "split": {"split_csv": str(split_csv)}}, overrides)


def _outputs_dice(seg: LungSegmenter, rows: pd.DataFrame) -> dict[str, dict]:
    """Mean lung Dice of ``rows`` (one source, scored against its own masks) for every lung output of ``seg``."""
    out = {}
    for output in [None, *seg.conventions]:
        _, summary = evaluate_segmenter(seg, rows, convention=output)
        lungs = next(iter(summary["by_source"].values()))["lungs"]
        out[output or "shared"] = {"dice_mean": lungs["dice_mean"], "n": int(len(rows))}
    return out


def cmd_loso(args: argparse.Namespace) -> None:
    """Leave one source out: train on the two others (the main split's train/val parts of them), then score
    every lung output (shared channels, each trained convention's) on the held-out source's val and test
    parts, against that source's own masks: how each output does on an unseen hospital's films."""
    df, split_csv = _main_split(Path(args.out))
    out = Path(args.out)
    cfg = _loso_config(args.held_out, split_csv, args.set)
    log(f"machine {machine()}")
    run = train_segmentation(cfg, out=out, resume=args.resume, progress=progress_logger())
    seg = LungSegmenter.from_run(run, convention="shared")
    pattern = SOURCE_PATTERNS[args.held_out]
    held = df[df[schema.SOURCE_DATASET].astype(str).map(lambda s: fnmatch.fnmatch(s, pattern))]
    result = {"held_out": args.held_out, "run": str(run), "conventions": seg.conventions,
              "epochs": int(len(pd.read_csv(run / "history.csv"))), "machine": machine()}
    for part in ("val", "test"):
        result[part] = _outputs_dice(seg, held[held["split"] == part].reset_index(drop=True))
        log(f"held-out {args.held_out} {part}: {result[part]}")
    history = pd.read_csv(run / "history.csv")
    result["train_minutes"] = float(history["epoch_seconds"].sum() / 60)
    path = RESULTS / f"segmentation_loso_{args.held_out}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    log(f"wrote {path}")


def cmd_default_output(args: argparse.Namespace) -> None:
    """Choose and record the main lung run's default output from the ``loso`` results (val parts only)."""
    from cxrlab.anatomy.default_output import choose_default_output, write_default_output

    loso = [json.loads((RESULTS / f"segmentation_loso_{s}.json").read_text()) for s in SOURCE_PATTERNS
            if (RESULTS / f"segmentation_loso_{s}.json").exists()]
    if len(loso) < len(SOURCE_PATTERNS):
        raise SystemExit(f"run `loso` for every source first ({len(loso)} of {len(SOURCE_PATTERNS)} found)")
    seg = LungSegmenter.from_run(args.lung_run, convention="shared")
    choice = choose_default_output(loso, seg.conventions)
    evidence = {**{k: v for k, v in choice.items() if k != "convention"},
                "held_out_source_dice": {r["held_out"]: {"val": r["val"], "test": r["test"]} for r in loso},
                "chosen_by": "python bench/segmentation.py default-output", "machine": machine()}
    path = write_default_output(args.lung_run, choice["convention"], evidence)
    (RESULTS / "segmentation_default_output.json").write_text(json.dumps({"run": str(args.lung_run),
                                                                          "convention": choice["convention"],
                                                                          **evidence}, indent=2))
    log(f"default output of {args.lung_run}: {choice['convention'] or 'shared'} ({path})")
    page = Path(args.doc)
    page.write_text(default_output_page(loso, choice, args.lung_run, seg.conventions))
    log(f"wrote {page}")


def default_output_page(loso: list[dict], choice: dict, lung_run: str, conventions: list[str]) -> str:
    outputs = ["shared", *conventions]
    conv_source = {c: next((k for k, p in SOURCE_PATTERNS.items() if BENCH_CONVENTIONS.get(c) == [p]), c)
                   for c in conventions}

    def cell(r: dict, part: str, o: str) -> str:
        v = r[part].get(o)
        return f"{v['dice_mean']:.4f}" if v else "–"

    head = "| held-out source (n val / test) | " + " | ".join(
        f"{o} (val / test)" for o in outputs) + " |\n|---|" + "---|" * len(outputs)
    rows = []
    for r in loso:
        n = f"{next(iter(r['val'].values()))['n']} / {next(iter(r['test'].values()))['n']}"
        rows.append(f"| {r['held_out']} ({n}) | " + " | ".join(f"{cell(r, 'val', o)} / {cell(r, 'test', o)}"
                                                              for o in outputs) + " |")
    gains = choice["gains_over_shared_val"]
    gain_lines = [f"- `{c}` ({conv_source[c]}'s annotators): mean val gain over shared "
                  f"{g['mean_gain']:+.4f} on held-out {', '.join(g['folds'])} "
                  f"({', '.join(f'{x:+.4f}' for x in g['gains'])})" for c, g in gains.items()]
    machine_line = loso[0].get("machine", {})
    return "\n".join([
        "# Stage I: which lung output films of an unseen hospital get",
        "",
        "Produced by `python bench/segmentation.py loso --held-out SRC --out runs/lung_loso_SRC --set threads=1` "
        "for each of the three sources, then `python bench/segmentation.py default-output --lung-run "
        f"{lung_run}`. Each leave-one-source-out run is the main lung recipe (128 px, U-Net/Lite0, shared and "
        "per-convention lung channels) trained on the two other sources at the cross-source budget "
        f"({loso[0].get('epochs', '?')} epochs × {CROSS_BUDGET['samples_per_epoch']} draws), on the main run's "
        "patient split; every lung output is then scored against the held-out source's own masks.",
        "",
        f"- Machine: {machine_line.get('cpu', '?')}, {machine_line.get('cores', '?')} cores; per run: "
        + "; ".join(f"{r['held_out']} held out: {r.get('train_minutes', float('nan')):.1f} min of training, "
                    f"{r.get('machine', {}).get('threads', '?')} thread(s), finished {r.get('machine', {}).get('date_utc', '?')}"
                    f" UTC, load `{r.get('machine', {}).get('uptime', '?')}`" for r in loso) + ".",
        "- Mean lung Dice per image (both lungs), val / test part of the held-out source. \"–\": that fold's "
        "model has no such output (a source's own convention is never available when it is held out — that is "
        "the unseen-hospital case).",
        "",
        head,
        *rows,
        "",
        f"Rule ({choice['rule']}), on the val parts only:",
        *gain_lines,
        "",
        f"**Default output of `{lung_run}`: `{choice['convention'] or 'shared'}`** — recorded in "
        f"`{lung_run}/default_output.json`; `LungSegmenter.from_run`, the severity pipeline, the service and "
        "`cxrlab segment predict` use it unless `--convention` says otherwise (`shared` for the shared channels).",
        "",
        "What this cannot show: three sources make three folds, so the gains are means of two paired differences "
        "each; a fourth hospital's annotators may draw lungs differently again. The test columns are reported, "
        "never used to choose.",
        "",
    ])


def model_gflops(seg: LungSegmenter) -> float:
    """Forward FLOPs per image at the model's size."""
    return count_flops(seg.model, torch.rand(1, seg.in_channels, seg.config.size, seg.config.size)) / 1e9


def cmd_resolution(args: argparse.Namespace) -> None:
    """The Dice a perfect model would keep at each input size: truth lung masks letterboxed down (area
    interpolation) and back up (bilinear, threshold 0.5), against the originals, per source."""
    import cv2

    from cxrlab.anatomy import dice
    from cxrlab.anatomy.evaluate import _truth

    cfg = load_config(BENCH_CONFIG)
    df = load_table(cfg)
    result: dict[str, dict[str, float]] = {}
    for source, group in df.groupby(schema.SOURCE_DATASET):
        rows = group.sample(min(args.n, len(group)), random_state=0)
        scores: dict[int, list[float]] = {s: [] for s in args.sizes}
        for _, row in rows.iterrows():
            truth = _truth(row, cfg.targets, True)[1][schema.MASK_LUNGS].astype(np.float32)
            h, w = truth.shape
            for size in args.sizes:
                f = size / max(h, w)
                small = cv2.resize(truth, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
                back = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
                scores[size].append(dice(back.astype(np.uint8), truth.astype(np.uint8)))
        result[source] = {str(s): float(np.mean(v)) for s, v in scores.items()}
        log(f"{source[:40]}: {result[source]}")
    out = RESULTS / "segmentation_resolution.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images_per_source": args.n, "dice_by_size": result, "machine": machine()}, indent=2))
    log(f"wrote {out}")


def cmd_speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    seg = LungSegmenter.from_run(args.run, precision=args.precision)
    peaks = {"fp32": gemm_peak(torch.float32) / 1e9, "bf16": gemm_peak(torch.bfloat16) / 1e9}
    log(f"GEMM peak GFLOP/s {peaks}")
    # 256-px inputs: COVID-QU-Ex images are natively 256x256.
    images = sorted((SOURCES["covid_qu_ex"] / "images").rglob("*.png"))[: args.n]
    gflops = model_gflops(seg)
    rates = []
    for _ in range(args.repeats):  # median of repeats: single passes swing by +-25 % on a small shared CPU
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for start in range(0, len(images), args.batch):
                chunk = images[start:start + args.batch]
                arrays = [read_image(p)[0] for p in chunk]
                for path, masks in zip(chunk, seg.predict_batch(arrays, batch_size=args.batch)):
                    for key in (schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK):
                        write_png(Path(tmp) / f"{path.stem}_{key}.png", masks[key], mask=True)
            rates.append(len(images) / (time.perf_counter() - t0))
    rate = float(np.median(rates))
    # Training speed comes from a run's history: by default the benchmark run itself, or a short timing run
    # trained with the same config on a quiet machine (``--train-run``), since epochs of a long run on a
    # shared CPU mix very different loads.
    train_run = Path(args.train_run or args.run)
    hist = pd.read_csv(train_run / "history.csv")
    train_rate = float(hist["train_images_per_s"].median())
    n_train = int((pd.read_csv(Path(args.run) / "split.csv")["split"] == "train").sum())
    result = {
        "end_to_end_images_per_s": rate, "end_to_end_repeats": rates, "images": len(images), "batch": args.batch, "precision": seg.precision,
        "model_input_px": seg.config.size, "model_forward_gflop_per_image": gflops,
        "gemm_peak_gflops": peaks,
        "inference_fraction_of_peak": rate * gflops / peaks[seg.precision],
        "train_images_per_s_median": train_rate, "train_rate_from_run": str(train_run),
        "train_images_full_epoch": n_train, "full_epoch_minutes_estimated": n_train / train_rate / 60,
        # forward + backward ~ 3x forward FLOPs
        "train_fraction_of_peak": train_rate * 3 * gflops / peaks[str(hist["precision"].iloc[-1])],
        "machine": machine(),
    }
    out = RESULTS / "segmentation_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    log(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default="runs/lung_bench")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--set", action="append", default=[], help="config override key=value")
    f = sub.add_parser("finetune")
    f.add_argument("--out", default="runs/lung_bench_ft")
    f.add_argument("--resume", action="store_true")
    f.add_argument("--set", action="append", default=[], help="config override key=value")
    sel = sub.add_parser("select")
    sel.add_argument("--runs", nargs="+", required=True)
    c = sub.add_parser("cross")
    c.add_argument("--train-source", choices=sorted(SOURCES), required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--resume", action="store_true")
    c.add_argument("--set", action="append", default=[])
    lo = sub.add_parser("loso")
    lo.add_argument("--held-out", choices=sorted(SOURCES), required=True)
    lo.add_argument("--out", required=True)
    lo.add_argument("--resume", action="store_true")
    lo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    do = sub.add_parser("default-output")
    do.add_argument("--lung-run", default="runs/lung_bench")
    do.add_argument("--doc", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks" /
                                         "lung_default_output.md"))
    res = sub.add_parser("resolution")
    res.add_argument("--n", type=int, default=50, help="images per source")
    res.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256])
    s = sub.add_parser("speed")
    s.add_argument("--run", default="runs/lung_bench")
    s.add_argument("--train-run", default=None, help="run whose history gives the training speed (default --run)")
    s.add_argument("--n", type=int, default=256)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--precision", default="auto")
    r = sub.add_parser("report")
    r.add_argument("--run", default="runs/lung_bench")
    r.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "anatomy.md"))
    args = p.parse_args(argv)
    {"train": cmd_train, "finetune": cmd_finetune, "select": cmd_select, "resolution": cmd_resolution,
     "cross": cmd_cross, "loso": cmd_loso, "default-output": cmd_default_output, "speed": cmd_speed,
     "report": cmd_report}[args.cmd](args)


def cmd_report(args: argparse.Namespace) -> None:
    from bench.segmentation_report import write_report

    write_report(Path(args.run), RESULTS, Path(args.out))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
