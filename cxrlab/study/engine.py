"""Running a list of trials on Ray Tune: one trial per (combination, fold, side), one CPU each, local by
default (``ray.init()``) or on a cluster (``ray.init(address=...)``).

Resume: each batch is a named Tune experiment under ``DIR/ray/``; after a kill it is continued with
``Tuner.restore`` (``Tuner.can_restore``; Ray processes the killed driver left behind are ended first), and a
trial whose cxrlab run directory already holds ``trial.json`` is skipped (an interrupted training resumes from its
``checkpoints/last.pt``). Progress: one line per finished
trial with an overall bar.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from cxrlab.errors import CxrlabError
from cxrlab.study.trial import read_trial, run_trial, trial_done


class StudyError(CxrlabError):
    """A trial failed; the message is the trial and its error in one line."""


def _trainable(config: dict[str, Any]) -> dict[str, Any]:
    trial = config["trial"]
    # "runner": "module:function" of another kind of trial (e.g. one ensemble learner fold); default: a grid trial
    if trial.get("runner"):
        import importlib

        module, name = trial["runner"].split(":")
        out = getattr(importlib.import_module(module), name)(trial)
    else:
        out = run_trial(trial)
    return {"done": 1, **{k: v for k, v in out["scores"].items() if isinstance(v, (int, float)) and v is not None}}


def end_orphaned_ray_processes(log: Callable[[str], None] | None = None, wait: float = 3.0) -> list[int]:
    """End this user's Ray processes (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, idle workers) whose raylet
    is gone; returns their pids.

    When the driver of a local Ray is killed (``kill -9`` of a study, the machine's OOM killer), its raylet dies but
    the agents it started can outlive it (ray-project/ray#52385), ~90 MB each, on every kill, until the machine is
    restarted. Every ``ray::`` process is started by a raylet; one whose parent is no longer a raylet (it was
    handed to init) serves no cluster, so ending it is safe; the rest are left alone. (The raylet's pid in the
    process's environment cannot be relied on: setting the ``ray::`` title may clear that memory.)"""
    import psutil

    uid = os.getuid()
    orphans = []
    for proc in psutil.process_iter(["pid", "cmdline", "uids"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if not cmdline or not cmdline[0].startswith("ray::") or proc.info["uids"].real != uid:
                continue
            parent = proc.parent()
            if parent is None or parent.name() != "raylet":
                orphans.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in orphans:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    # the runtime-env agent may ignore SIGTERM while idle (ray-project/ray#59162)
    _, alive = psutil.wait_procs(orphans, timeout=wait)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    pids = [p.pid for p in orphans]
    if pids and log:
        log(f"ended {len(pids)} Ray process(es) left behind by an earlier run that was killed (pids "
            f"{', '.join(map(str, pids))})")
    return pids


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               log: Callable[[str], None] | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Tune's legacy reporter at verbose=0 prints nothing: the study's own line per trial is the progress
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        end_orphaned_ray_processes(log)  # a local Ray after a killed one: free what the killed one left
        ray.init(num_cpus=num_cpus, **kwargs)


def _bar(done: int, total: int, width: int = 20) -> str:
    full = int(width * done / max(total, 1))
    return f"[{'#' * full}{'.' * (width - full)}] {done}/{total}"


def _line(out: dict[str, Any], done: int, total: int) -> str:
    s = out.get("scores", {})
    side = f" {out['side']}" if out.get("side") else ""
    if "macro_f1" in s and "macro_mae" not in s:  # a classification trial (e.g. an ensemble learner fold)
        f1, acc = s.get("macro_f1"), s.get("accuracy")
        scores = f"macro-F1 {'-' if f1 is None else f'{f1:.3f}'}, accuracy {'-' if acc is None else f'{acc:.3f}'}"
    else:
        mm, hcs = s.get("macro_mae"), s.get("ma_hcs")
        scores = f"macro-MAE {'-' if mm is None else f'{mm:.3f}'}, MA-HCS {'-' if hcs is None else f'{hcs:.3f}'}"
    return f"{_bar(done, total)} {out['combo']} fold {out['fold']}{side}: {scores} ({out.get('seconds', 0):.0f} s)"


# the driver-side log and counter of each running batch, by name: Tune pickles its callbacks with the
# experiment state, so the callback holds only the name (a console or a lock cannot be pickled)
_SINKS: dict[str, tuple[Callable[[str], None], dict[str, Any]]] = {}


class Progress(tune.Callback):
    """One line per finished trial with the overall bar; module-level so Tune pickles it by reference."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log, counter = _SINKS.get(self.key, (print, {"done": set(), "total": 0}))
        run_dir = trial.config["trial"]["run_dir"]
        if trial_done(run_dir):
            counter["done"].add(trial.config["trial"]["id"])
            log(_line(read_trial(run_dir), len(counter["done"]), counter["total"]))


def _fit(path: Path, todo: list[dict[str, Any]], progress: Any, name: str) -> None:
    """One Tune experiment at ``path``: restored when Tune saved its state there (after a kill), else new.
    A restored experiment whose trials all ended leaves nothing to do; the caller starts a fresh one for the
    trials still without a result (e.g. a trial directory removed by hand)."""
    from ray import tune

    trainable = tune.with_resources(_trainable, {"cpu": 1})
    tuner = None
    if tune.Tuner.can_restore(path):
        try:
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        except Exception:  # noqa: BLE001 - a state file cut short by the kill: start the batch again
            tuner = None
    if tuner is None:
        if path.exists():  # killed before Tune saved its state: nothing to restore, start the batch again
            shutil.rmtree(path)
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(reuse_actors=True),  # one worker process per CPU: imports paid once
            run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent.resolve()), verbose=0,
                                      callbacks=[progress], failure_config=tune.FailureConfig(max_failures=0),
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)))
    try:
        grid = tuner.fit()
    except Exception as exc:  # noqa: BLE001 - Tune raises a memory kill from fit(), not as a trial error
        if not is_memory_kill(exc):
            raise
        first = next((ln.strip() for ln in str(exc).splitlines() if "memory" in ln.lower()), str(exc))
        raise StudyError(f"{name}: a trial was killed because the machine ran low on memory ({first}); finished "
                         "trials are kept: rerun the same command to resume, with --trials-at-once 1 (one trial "
                         "at a time) if it happens again") from exc
    if grid.errors:
        failed = [r for r in grid if r.error is not None]
        which = failed[0].config["trial"]["id"] if failed and failed[0].config else "a trial"
        lines = [ln for ln in str(grid.errors[0]).strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else "unknown error"
        raise StudyError(f"{len(grid.errors)} trial(s) of {name} failed; {which}: {reason} "
                         f"(logs under {path}; rerun the same command to resume)")


def is_memory_kill(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is Ray's out-of-memory kill of a worker."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "OutOfMemoryError" or "running low on memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_trials(trials: list[dict[str, Any]], storage: Path, name: str, *, address: str | None = None,
               num_cpus: int | None = None, log: Callable[[str], None] = print,
               counter: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Run ``trials`` (configs of :func:`cxrlab.study.trial.run_trial`) as the Tune experiment ``name``; returns
    ``{trial id: trial.json}`` for all of them. ``counter`` ({"done": set of finished trial ids, "total"})
    carries the overall bar across stages."""
    counter = counter if counter is not None else {"done": set(), "total": len(trials)}
    counter["done"].update(t["id"] for t in trials if trial_done(t["run_dir"]))
    todo = [t for t in trials if not trial_done(t["run_dir"])]
    if todo:
        ensure_ray(address, num_cpus, log)

        _SINKS[name] = (log, counter)
        t0 = time.perf_counter()
        attempt = 0
        while todo:
            # first the stage's own experiment (restored after a kill); then, for trials it did not finish (a
            # restored experiment that had ended, a trial directory removed by hand), a fresh one
            path = storage.resolve() / (name if attempt == 0 else f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
            _fit(path, todo, Progress(name), name)
            left = [t for t in trials if not trial_done(t["run_dir"])]
            if len(left) >= len(todo) and attempt > 0:
                break  # no progress: reported below
            todo, attempt = left, attempt + 1
        log(f"{name}: done in {time.perf_counter() - t0:.0f} s")
    missing = [t["id"] for t in trials if not trial_done(t["run_dir"])]
    if missing:
        raise StudyError(f"{name}: {len(missing)} trial(s) have no result ({missing[0]}); rerun to resume")
    return {t["id"]: read_trial(t["run_dir"]) for t in trials}
