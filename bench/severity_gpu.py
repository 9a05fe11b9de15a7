"""Stage II of the severity benchmark trained on a lent accelerator, evaluated here on the CPU.

The accelerator machine gets the repository only (64 MiB): a lossless WebP copy of the COVID-QU-Ex rows
Stage II learns from (``cxrlab.data.pack``), the missing Python packages as wheels (``.whl/``), nothing else.
It trains the candidate recipes below at once on its GPU (``bench/severity.py train`` with
``disease.device=cuda``; the same commands without that key are the CPU recipe), picks the one with the best
*validation* Dice and sends back its weights (the trainer's own checkpoint without the optimiser state, in
chunks under the transfer limit) and every candidate's history. ``unpack`` turns that into an ordinary
severity run under ``runs/severity_gpu`` (same split as the CPU benchmark: same rows, same seed), and the
usual steps evaluate it::

    python bench/severity_gpu.py pack                       # here: gpu_data/ (git-ignored), sizes
    # device: bash bench/severity_gpu.sh  (carry gpu_data and .whl)  -> $OUT/*
    python bench/severity_gpu.py unpack --files DIR         # here: runs/severity_gpu/{data,run}
    for s in fit evaluate speed report; do python bench/severity.py $s --out runs/severity_gpu --set ...; done
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKED = ROOT / "gpu_data" / "covidquex"
GPU_RUNS = ROOT / "runs" / "gpu"
CHUNK = 15 * 2**20  # the device returns files of at most 16 MiB
TRANSFER_BUDGET = 60 * 2**20  # and 64 MiB together (8 files): room for the tar of the small files

#: The shared recipe (the CPU benchmark's keys, a longer budget) and what each candidate changes.
COMMON = ["disease.size=256", "disease.samples_per_epoch=2000", "disease.batch_size=32", "disease.patience=12",
          "disease.val_max_images=229", "disease.lr=0.002"]
EPOCHS = 50
CANDIDATES = {
    "unet_bce_dice": [],
    "unet_tversky": ["disease.loss.name=tversky"],
    "manet_bce_dice": ["disease.arch=manet"],
    "fpn_bce_dice": ["disease.arch=fpn"],
}
DEVICE_KEYS = ["disease.device=cuda", "disease.num_workers=3"]
# --local-test: the whole round trip on this CPU in a minute (tiny budget), before spending device time
LOCAL_TEST_KEYS = ["disease.device=cpu", "disease.num_workers=1", "disease.size=64", "disease.samples_per_epoch=32",
                   "disease.val_max_images=16"]
LOCAL_TEST = False


def train_command(name: str, manifest: Path, device: bool = True) -> list[str]:
    sets = COMMON + CANDIDATES[name] + (DEVICE_KEYS if device else []) + [f"manifests.0={manifest}"]
    if LOCAL_TEST:
        sets += LOCAL_TEST_KEYS
    return [sys.executable, str(ROOT / "bench" / "severity.py"), "train", "--out", str(GPU_RUNS / name),
            "--epochs", str(1 if LOCAL_TEST else EPOCHS), *[a for s in sets for a in ("--set", s)]]


def pack(args: argparse.Namespace) -> None:
    from cxrlab.data.manifest import Manifest, load_manifest
    from cxrlab.data.pack import pack_manifest, packed_size

    m = load_manifest(Path(args.bench) / "data" / "covidquex.csv")
    # Stage II learns from the annotated COVID-19 rows and the normal rows (clear lungs); the never-annotated
    # pneumonia rows are left out by the trainer anyway.
    df = m.df[m.df["finding"].isin(["covid19", "normal"])].reset_index(drop=True)
    pack_manifest(Manifest(df), PACKED, columns=["mask_lungs", "mask_disease"])
    print(f"{PACKED}: {len(df)} rows, {packed_size(PACKED) / 2**20:.1f} MiB")


def _strip(checkpoint: Path, dst: Path) -> dict:
    """The trainer's checkpoint without optimiser/scheduler/RNG state (what inference and evaluation read)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    keep = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "torch_rng", "numpy_rng",
                                                        "python_rng")}
    torch.save(keep, dst)
    return {"epoch": int(state["epoch"]) + 1, "best_val_dice": float(state["best_saved"])}


def run(args: argparse.Namespace) -> None:
    """On the accelerator machine: train every candidate at once, then collect into ``args.out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    GPU_RUNS.mkdir(parents=True, exist_ok=True)
    manifest = PACKED / "manifest.csv"
    procs = {}
    t0 = time.time()
    for name in CANDIDATES:
        log = open(GPU_RUNS / f"{name}.log", "w")
        procs[name] = subprocess.Popen(["timeout", str(args.budget), *train_command(name, manifest)],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while any(p.poll() is None for p in procs.values()):
        time.sleep(15)
        lines = []
        for name in CANDIDATES:
            hist = GPU_RUNS / name / "run" / "disease" / "history.csv"
            n = max(0, len(hist.read_text().splitlines()) - 1) if hist.exists() else 0
            lines.append(f"{name} {n} ep")
        print(f"{time.time() - t0:5.0f}s " + ", ".join(lines), flush=True)
    summary = {"wall_seconds": round(time.time() - t0, 1), "budget_seconds": args.budget, "candidates": {},
               "commands": {n: " ".join(train_command(n, manifest)[1:]) for n in CANDIDATES}}
    try:
        import torch

        summary["gpu"] = torch.cuda.get_device_name(0)
        summary["torch"] = torch.__version__
    except Exception as exc:  # noqa: BLE001 - a summary line, never a reason to lose the results
        summary["gpu"] = f"unknown ({exc})"
    for name, p in procs.items():
        disease = GPU_RUNS / name / "run" / "disease"
        best = disease / "checkpoints" / "best.pt"
        info = {"returncode": p.returncode, "finished": (disease / "metrics.json").exists()}
        if best.exists():
            info.update(_strip(best, GPU_RUNS / f"{name}.best.pt"))
        summary["candidates"][name] = info
    ranked = sorted((n for n in summary["candidates"] if "best_val_dice" in summary["candidates"][n]),
                    key=lambda n: -summary["candidates"][n]["best_val_dice"])
    summary["chosen"] = ranked[0] if ranked else None
    # Weights back: the chosen model first, then the others while the transfer limits allow.
    files, used = 1, 0
    for name in ranked:
        blob = (GPU_RUNS / f"{name}.best.pt").read_bytes()
        parts = [blob[i:i + CHUNK] for i in range(0, len(blob), CHUNK)]
        if files + len(parts) > 8 or used + len(blob) > TRANSFER_BUDGET:
            continue
        for k, part in enumerate(parts):
            (out / f"{name}.best.pt.{k}").write_bytes(part)
        summary["candidates"][name]["chunks"] = len(parts)
        files, used = files + len(parts), used + len(blob)
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for name in CANDIDATES:
            tar.add(GPU_RUNS / f"{name}.log", arcname=f"{name}/train.log")
            for rel in ("train_info.json", "run/recipe.yaml", "run/disease/recipe.yaml", "run/disease/split.csv",
                        "run/disease/history.csv", "run/disease/metrics.json"):
                if (GPU_RUNS / name / rel).exists():
                    tar.add(GPU_RUNS / name / rel, arcname=f"{name}/{rel}")
        data = json.dumps(summary, indent=1).encode()
        ti = tarfile.TarInfo("summary.json")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    print(json.dumps(summary, indent=1))


def unpack(args: argparse.Namespace) -> None:
    """Here: the chosen candidate as ``runs/severity_gpu/run`` (local paths, this machine's split file)."""
    import pandas as pd
    import yaml

    from cxrlab.data.manifest import Manifest, save_manifest
    from cxrlab.severity.config import load_severity_config
    from cxrlab.severity.train import training_table
    from cxrlab.utils import atomic_write_json, atomic_write_text

    src = Path(args.files)
    dest = ROOT / "runs" / "severity_gpu"
    shutil.rmtree(dest / "device", ignore_errors=True)
    with tarfile.open(src / "runs.tar.gz") as tar:
        tar.extractall(dest / "device", filter="data")
    summary = json.loads((dest / "device" / "summary.json").read_text())
    name = args.candidate or summary["chosen"]
    chunks = sorted(src.glob(f"{name}.best.pt.*"), key=lambda p: int(p.suffix[1:]))
    if not chunks:
        raise SystemExit(f"no weights of {name} came back (see {dest / 'device' / 'summary.json'})")
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for f in ("covidquex.csv", "ieee8023.csv"):
        shutil.copyfile(Path(args.bench) / "data" / f, dest / "data" / f)
    run_dir = dest / "run"
    disease = run_dir / "disease"
    (disease / "checkpoints").mkdir(parents=True, exist_ok=True)
    with open(disease / "checkpoints" / "best.pt", "wb") as fh:
        for c in chunks:
            fh.write(c.read_bytes())
    device_run = dest / "device" / name / "run"
    cfg = yaml.safe_load((device_run / "recipe.yaml").read_text())
    cfg.update(manifests=[str(dest / "data" / "covidquex.csv")], out=str(run_dir),
               lung_run=str(ROOT / "runs" / "lung_bench"))
    cfg["brixia"]["manifests"] = [str(dest / "data" / "ieee8023.csv")]
    scfg = load_severity_config(cfg)
    atomic_write_text(run_dir / "recipe.yaml", "# cxrlab severity run; resolved config\n"
                      + yaml.safe_dump(scfg.model_dump(mode="json"), sort_keys=False))
    table = training_table(scfg, run_dir, lambda *a: None)
    save_manifest(Manifest(table), run_dir / "disease_manifest.csv")
    split = pd.read_csv(device_run / "disease" / "split.csv", dtype=str)
    if len(split) != len(table) or (split["patient_id"].to_numpy() != table["patient_id"].astype(str).to_numpy()).any():
        raise SystemExit("the device's split rows differ from this machine's training table")
    split["image"] = table["image"].to_numpy()
    split.to_csv(disease / "split.csv", index=False)
    seg = (device_run / "disease" / "recipe.yaml").read_text()
    header, body = seg.split("\n", 1)
    seg_cfg = yaml.safe_load(body)
    seg_cfg.update(manifests=[str(run_dir / "disease_manifest.csv")], out=str(disease))
    atomic_write_text(disease / "recipe.yaml", header + " (trained on the accelerator; paths rewritten)\n"
                      + yaml.safe_dump(seg_cfg, sort_keys=False))
    shutil.copyfile(device_run / "disease" / "history.csv", disease / "history.csv")
    metrics_path = device_run / "disease" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {
        "best_val_dice": summary["candidates"][name]["best_val_dice"],
        "stopped": f"wall-clock limit of {summary['budget_seconds']} s on the accelerator"}
    metrics["trained_on"] = {"gpu": summary.get("gpu"), "torch": summary.get("torch"),
                             "wall_seconds": summary["wall_seconds"], "candidate": name,
                             "chosen_by": "best validation Dice among " + ", ".join(summary["candidates"])}
    atomic_write_json(disease / "metrics.json", metrics)
    info = json.loads((dest / "device" / name / "train_info.json").read_text()) \
        if (dest / "device" / name / "train_info.json").exists() else {}
    info["gpu"] = summary.get("gpu")
    atomic_write_json(dest / "train_info.json", info)
    print(json.dumps({n: {k: v for k, v in c.items()} for n, c in summary["candidates"].items()}, indent=1))
    sets = train_command(name, Path("-"))[7:]
    sets = [x for i, x in enumerate(sets) if not (x.startswith("manifests.0=") or
                                                  (x == "--set" and sets[i + 1].startswith("manifests.0=")))]
    print(f"{run_dir}: {name}. Next, on this CPU (the config must be the run's own, device keys included):")
    for step in ("fit", "evaluate", "speed", "report"):
        print(f"python bench/severity.py {step} --out {dest} {' '.join(sets)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["pack", "run", "unpack", "commands"])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"), help="run: where the results go")
    p.add_argument("--budget", type=int, default=420, help="run: wall-clock seconds per candidate")
    p.add_argument("--files", default="gpu_out", help="unpack: the folder the device's files came back to")
    p.add_argument("--candidate", default=None, help="unpack: another candidate than the chosen one")
    p.add_argument("--bench", default=str(ROOT / "runs" / "severity_bench"),
                   help="pack/unpack: the CPU benchmark folder whose data/ manifests are used")
    p.add_argument("--local-test", action="store_true", help="run: a tiny budget on this CPU (round-trip check)")
    args = p.parse_args()
    global LOCAL_TEST
    LOCAL_TEST = args.local_test or bool(os.environ.get("SEVERITY_GPU_LOCAL_TEST"))
    if args.step == "commands":  # the CPU recipe of each candidate
        for name in CANDIDATES:
            print(" ".join(train_command(name, Path(args.bench) / "data" / "covidquex.csv",
                                         device=False)[1:]))
        return
    {"pack": pack, "run": run, "unpack": unpack}[args.step](args)


if __name__ == "__main__":
    main()
