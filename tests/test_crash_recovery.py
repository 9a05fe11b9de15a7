"""Crash recovery: ``kill -9`` during ``cxrlab train``, ``cxrlab segment train`` and ``cxrlab severity train``,
then the same command with ``--resume``, ends with the metrics of an uninterrupted run, and nothing in the run
directory is ever half-written.

Each test runs the installed console script in subprocesses: once to completion (A), once killed with SIGKILL as
soon as the run directory shows a checkpoint past an epoch boundary, then resumed (B). The kill is decided by
polling the run directory, not by anything inside the trainers; a run that ends before it could be killed fails
the test (the run must then be made bigger), it never passes silently.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch
import yaml

CXRLAB = Path(sys.executable).parent / "cxrlab"
POLL_S = 0.01
TOL = 1e-6
TEMP = re.compile(r"^\..+\.tmp(\.[^.]+)*$")  # cxrlab.utils.atomic_path's temporary files


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Subprocess environment: a private cache home (shared by A and B: cached inputs are bit-identical)."""
    home = tmp_path_factory.mktemp("crash_home")
    return {**os.environ, "CXRLAB_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "100"}


def cli(args: list[str], env: dict[str, str], log: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run([str(CXRLAB), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout)
    log.write_text(result.stdout)
    return result


def run_ok(args: list[str], env: dict[str, str], log: Path) -> None:
    result = cli(args, env, log)
    assert result.returncode == 0, f"cxrlab {' '.join(args)} failed:\n{result.stdout[-3000:]}"


def lines(path: Path) -> int:
    """Data rows of a CSV written atomically (0 while it does not exist)."""
    try:
        return max(path.read_text().count("\n") - 1, 0)
    except FileNotFoundError:
        return 0


def run_and_kill(args: list[str], env: dict[str, str], run_dir: Path, ready: Callable[[], bool], log: Path,
                 timeout: float = 240) -> None:
    """Start ``cxrlab args``, SIGKILL it as soon as ``ready()``; fail if it ends (or stalls) before that."""
    with open(log, "w") as out:
        proc = subprocess.Popen([str(CXRLAB), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(f"cxrlab {' '.join(args)} ended (exit {proc.returncode}) before it could be killed: "
                                f"make the run bigger\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no checkpoint in {run_dir} after {timeout} s\n{log.read_text()[-3000:]}")
                time.sleep(POLL_S)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: the run ended before the kill"


def check_files(run_dir: Path, allow_temp: bool) -> list[Path]:
    """Every JSON/parquet/pt/CSV/YAML file in ``run_dir`` loads; returns leftover temporary files (only
    allowed right after the kill: ``--resume`` must clear them)."""
    temps, checked = [], 0
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        if TEMP.match(path.name):
            temps.append(path)
            continue
        suffix = path.suffix
        try:
            if suffix == ".json":
                json.loads(path.read_text())
            elif suffix == ".parquet":
                pd.read_parquet(path)
            elif suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=False)
            elif suffix == ".csv":
                pd.read_csv(path)
            elif suffix == ".yaml":
                yaml.safe_load(path.read_text())
            else:
                continue
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            pytest.fail(f"{path} does not load: {type(exc).__name__}: {exc}")
        checked += 1
    assert checked, f"nothing to check in {run_dir}"
    assert allow_temp or not temps, f"temporary files left in {run_dir}: {temps}"
    return temps


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Nested JSON values equal; floats within ``TOL``."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} != {b!r}"
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=TOL, rel=TOL), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, skip: tuple[str, ...] = ()) -> None:
    """Same rows and columns; numbers within ``TOL`` (columns in ``skip``, e.g. timings, are not compared)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b), (list(a.columns), list(b.columns), len(a), len(b))
    cols = [c for c in a.columns if c not in skip]
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=False, atol=TOL, rtol=TOL)


def json_of(path: Path) -> Any:
    return json.loads(path.read_text())


def no_resume_without_checkpoint(args: list[str], env: dict[str, str], log: Path) -> None:
    """``--resume`` where nothing was checkpointed: one sentence saying so, exit 2, no traceback."""
    result = cli([*args, "--resume"], env, log)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "Traceback" not in result.stdout and "nothing to resume" in result.stdout, result.stdout[-3000:]


# --- cxrlab train ---------------------------------------------------------------------------------------------
# Two stages (a frozen backbone, then all of it), dropout, sampler balancing, seeded augmentation, a scheduler
# that reduces on plateau and early stopping: the state a resume must carry over.
TRAIN_SET = ["train.num_workers=0", "train.threads=1", "input.size=48", "model.dropout=0.2", "train.batch_size=8",
             "train.plateau_patience=0", "train.early_stopping_patience=3",
             "input.augment=[{name: rand_affine, rotate: 10, scale: [0.9, 1.1], translate: 0.05}]",
             "train.stages=[{epochs: 2, train_blocks: 0, lr: 0.01}, {epochs: 4, train_blocks: all, lr: 0.003}]"]
TRAIN_EPOCHS = 6


def test_train_killed_and_resumed_matches_uninterrupted(phantom_root: Path, env, tmp_path: Path):
    def args(out: Path) -> list[str]:
        return ["train", "phantom-diagnosis", "--data", str(phantom_root / "manifest.csv"), "--out", str(out),
                *[a for s in TRAIN_SET for a in ("--set", s)]]

    full, cut = tmp_path / "full", tmp_path / "cut"
    no_resume_without_checkpoint(args(cut), env, tmp_path / "empty.log")
    run_ok(args(full), env, tmp_path / "full.log")
    # kill in stage 2: history.csv is written just before last.pt, so a 4th row means last.pt holds stage 2's
    # first epoch at least (with its optimizer and scheduler state), and the kill lands in or after its next save
    run_and_kill(args(cut), env, cut, lambda: lines(cut / "history.csv") >= 4, tmp_path / "cut.log")
    assert not (cut / "metrics.json").exists()
    check_files(cut, allow_temp=True)
    last = torch.load(cut / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert last["state"]["stage"] == 1 and 1 <= last["state"]["epoch"] < 4, last["state"]
    assert last["optimizer"] is not None and last["scheduler"] is not None
    run_ok([*args(cut), "--resume"], env, tmp_path / "resume.log")

    check_files(cut, allow_temp=False)
    ma, mb = json_of(full / "metrics.json"), json_of(cut / "metrics.json")
    for m in (ma, mb):
        m["run"].pop("train_seconds_this_call")
    assert_same(ma, mb)
    timing = ("train_images_per_s", "seconds")
    ha, hb = pd.read_csv(full / "history.csv"), pd.read_csv(cut / "history.csv")
    assert len(ha) == TRAIN_EPOCHS and list(hb["epoch"]) == [1, 2, 1, 2, 3, 4]  # no row lost or repeated
    assert_same_table(ha, hb, skip=timing)
    assert_same_table(pd.read_parquet(full / "predictions.parquet"), pd.read_parquet(cut / "predictions.parquet"))
    for name in ("best.pt", "last.pt"):
        wa, wb = (torch.load(r / "checkpoints" / name, map_location="cpu", weights_only=False)["model"]
                  for r in (full, cut))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=TOL, rtol=TOL, msg=f"{name}: {k}")


# --- cxrlab segment train -------------------------------------------------------------------------------------
SEG = {"arch": "unet", "encoder": "resnet18", "weights": "none", "size": 64, "samples_per_epoch": 64,
       "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}, "augment": {"rotate": 5.0, "aspect": 0.0},
       "val_max_images": 12, "batch_size": 8, "threads": 1, "seed": 0}
SEG_EPOCHS = 3
SEG_TIMING = ("train_seconds", "train_images_per_s", "epoch_seconds")


def seg_config(tmp: Path, manifest: Path) -> Path:
    path = tmp / "lung.yaml"
    path.write_text(yaml.safe_dump({**SEG, "manifests": [str(manifest)], "lr": 0.01, "epochs": SEG_EPOCHS}))
    return path


@pytest.fixture(scope="module")
def lung_run(phantom_root: Path, env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted ``cxrlab segment train`` (A of the segmentation test, lung run of the severity test)."""
    tmp = tmp_path_factory.mktemp("lung")
    run_ok(["segment", "train", "--config", str(seg_config(tmp, phantom_root / "manifest.csv")),
            "--out", str(tmp / "full")], env, tmp / "full.log")
    return tmp / "full"


def test_segment_train_killed_and_resumed_matches_uninterrupted(phantom_root: Path, lung_run: Path, env,
                                                               tmp_path: Path):
    config = seg_config(tmp_path, phantom_root / "manifest.csv")
    cut = tmp_path / "cut"
    args = ["segment", "train", "--config", str(config), "--out", str(cut)]
    no_resume_without_checkpoint(args, env, tmp_path / "empty.log")
    run_and_kill(args, env, cut, lambda: (cut / "checkpoints" / "last.pt").is_file(), tmp_path / "cut.log")
    assert not (cut / "metrics.json").exists()
    check_files(cut, allow_temp=True)
    epoch = torch.load(cut / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["epoch"]
    assert 0 <= epoch < SEG_EPOCHS - 1  # epochs counted from 0: at least one more to go
    run_ok([*args, "--resume"], env, tmp_path / "resume.log")

    check_files(cut, allow_temp=False)
    assert_same(json_of(lung_run / "metrics.json"), json_of(cut / "metrics.json"))
    ha, hb = pd.read_csv(lung_run / "history.csv"), pd.read_csv(cut / "history.csv")
    assert list(hb["epoch"]) == list(range(1, SEG_EPOCHS + 1))
    assert_same_table(ha, hb, skip=SEG_TIMING)
    assert_same_table(pd.read_parquet(lung_run / "predictions.parquet"), pd.read_parquet(cut / "predictions.parquet"))


# --- cxrlab severity train ------------------------------------------------------------------------------------
SEV_EPOCHS = 3


def sev_config(tmp: Path, manifest: Path, lung: Path) -> Path:
    path = tmp / "severity.yaml"
    disease = {**SEG, "samples_per_epoch": 48, "lr": 0.003, "epochs": SEV_EPOCHS, "evaluate_test": False}
    path.write_text(yaml.safe_dump({"lung_run": str(lung), "manifests": [str(manifest)], "disease": disease}))
    return path


def test_severity_train_killed_and_resumed_matches_uninterrupted(phantom_root: Path, lung_run: Path, env,
                                                                tmp_path: Path):
    config = sev_config(tmp_path, phantom_root / "manifest.csv", lung_run)
    full, cut = tmp_path / "full", tmp_path / "cut"

    def args(out: Path) -> list[str]:
        return ["severity", "train", str(config), "--out", str(out)]

    no_resume_without_checkpoint(args(cut), env, tmp_path / "empty.log")
    assert not cut.exists()  # the refused resume created nothing
    run_ok(args(full), env, tmp_path / "full.log")
    last = cut / "disease" / "checkpoints" / "last.pt"
    run_and_kill(args(cut), env, cut, last.is_file, tmp_path / "cut.log")
    assert not (cut / "scoring.json").exists() and not (cut / "disease" / "metrics.json").exists()
    check_files(cut, allow_temp=True)
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] < SEV_EPOCHS - 1
    run_ok([*args(cut), "--resume"], env, tmp_path / "resume.log")

    check_files(cut, allow_temp=False)
    for name in ("scoring.json", "disease/metrics.json"):
        assert_same(json_of(full / name), json_of(cut / name), name)
    ha, hb = pd.read_csv(full / "disease" / "history.csv"), pd.read_csv(cut / "disease" / "history.csv")
    assert list(hb["epoch"]) == list(range(1, SEV_EPOCHS + 1))
    assert_same_table(ha, hb, skip=SEG_TIMING)
    ta, tb = (pd.read_csv(r / "disease_manifest.csv") for r in (full, cut))
    assert_same_table(ta.drop(columns="mask_disease"), tb.drop(columns="mask_disease"))
