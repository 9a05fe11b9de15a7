"""Optional MLflow tracking of a training run (recipe ``tracking.mlflow: true``, or ``cxrlab train --mlflow``).

Offline by default, as hospitals run it: the store is ``file:<run_dir>/mlruns`` (or ``$MLFLOW_TRACKING_URI`` when
that names a local path) and MLflow's usage telemetry is switched off; a server is contacted only when
``tracking.uri`` names one. Logged: the resolved recipe flattened to params (seed included), every history row as
metrics at step = epoch number across stages, the numeric leaves of ``metrics.json`` as ``<split>.<metric>``, and
the run directory's small files as artifacts. The MLflow run id is kept in ``<run_dir>/mlflow.json`` so
``--resume`` continues the same MLflow run.

>>> with track_run(recipe, run_dir, resume=False, step=0) as tracker:  # None when tracking is off
...     ...  # train, calling tracker.on_epoch_end(row) per epoch; metrics.json is written before the block ends
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes import Recipe
from cxrlab.utils import atomic_write_json

RUN_FILE = "mlflow.json"
ARTIFACTS = ("recipe.yaml", "split.csv", "history.csv", "metrics.json")
INSTALL_HINT = "pip install 'cxrlab[mlflow]'"
_PARAM_VALUE_MAX = 500  # the smallest limit among supported MLflow versions; recipe.yaml is logged in full
_BAD_KEY_CHARS = re.compile(r"[^\w\-./ ]")

_log = logging.getLogger(__name__)


def require_mlflow() -> Any:
    """The ``mlflow`` module, or a ConfigError saying how to install it (it is an optional dependency)."""
    # set before the import: MLflow's telemetry thread would otherwise try to reach the internet
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"tracking.mlflow is on but MLflow is not installed: {INSTALL_HINT}") from None
    return mlflow


def _is_local(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # one letter: a Windows drive


def resolve_uri(configured: str | None, run_dir: Path) -> str:
    """Where to log: ``configured``, else a local ``$MLFLOW_TRACKING_URI``, else ``file:<run_dir>/mlruns``."""
    uri = configured
    if uri is None:
        env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        if env and not _is_local(env):
            _log.warning("ignoring $MLFLOW_TRACKING_URI=%s (a server); name it in tracking.uri to log there", env)
        uri = env if env and _is_local(env) else None
    if uri is None:
        return (run_dir / "mlruns").resolve().as_uri()
    scheme = urlparse(uri).scheme
    return Path(uri).expanduser().resolve().as_uri() if scheme == "" or len(scheme) == 1 else uri


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{"train": {"stages": [{"lr": 0.003}]}}`` → ``{"train.stages.0.lr": "0.003"}``; leaves as JSON text."""
    if isinstance(obj, dict) and obj:
        items = obj.items()
    elif isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        items = ((str(i), x) for i, x in enumerate(obj))
    else:
        value = obj if isinstance(obj, str) else json.dumps(obj)
        return {_key(prefix): value[:_PARAM_VALUE_MAX]}
    out: dict[str, str] = {}
    for k, v in items:
        out.update(flatten_params(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """Finite numeric leaves of a nested dict (``metrics.json``) keyed ``a.b.c``; None/NaN/text are left out."""
    if isinstance(obj, dict):
        out: dict[str, float] = {}
        for k, v in obj.items():
            out.update(flatten_metrics(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, (int, float)) and math.isfinite(obj):
        return {_key(prefix): float(obj)}
    return {}


def _key(name: str) -> str:
    return _BAD_KEY_CHARS.sub("_", name)


class MlflowTracker:
    """One training run's MLflow run; ``on_epoch_end`` is the trainer's per-epoch callback."""

    def __init__(self, client: Any, run_id: str, run_dir: Path, step: int, log_checkpoints: bool):
        self.client, self.run_id, self.run_dir = client, run_id, run_dir
        self.step = step  # epochs logged so far (across stages)
        self.log_checkpoints = log_checkpoints

    @classmethod
    def open(cls, recipe: Recipe, run_dir: Path, resume: bool, step: int) -> "MlflowTracker":
        """A new MLflow run, or on ``resume`` the one named in ``mlflow.json`` (its store, its id)."""
        mlflow = require_mlflow()
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        cfg = recipe.tracking
        record = run_dir / RUN_FILE
        if resume and record.is_file():
            saved = json.loads(record.read_text())
            if _is_file_store(saved["tracking_uri"]):
                _allow_file_store()
            client = MlflowClient(tracking_uri=saved["tracking_uri"])
            try:
                client.get_run(saved["run_id"])
            except MlflowException as exc:
                raise InputError(record, f"MLflow run {saved['run_id']} not found in {saved['tracking_uri']} "
                                         f"({exc.message})", field="run_id") from None
            client.update_run(saved["run_id"], status="RUNNING")
            return cls(client, saved["run_id"], run_dir, step, cfg.checkpoints)
        uri = resolve_uri(cfg.uri, run_dir)
        if _is_file_store(uri):
            _allow_file_store()
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
        run = client.create_run(experiment_id, run_name=run_dir.name,
                                tags={"cxrlab.recipe": recipe.name, "cxrlab.run_dir": str(run_dir.resolve()),
                                      "cxrlab.mlflow_version": mlflow.__version__})
        run_id = run.info.run_id
        atomic_write_json(record, {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id})
        params = [Param(k, v) for k, v in flatten_params(recipe.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):  # MLflow's per-batch limit on params
            client.log_batch(run_id, params=params[i:i + 100])
        return cls(client, run_id, run_dir, step, cfg.checkpoints)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        self.step += 1
        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.client.log_batch(self.run_id, metrics=[Metric(_key(k), v, now, self.step) for k, v in values.items()])

    def finish(self) -> None:
        """Final metrics from ``metrics.json``, the run's small files as artifacts, status FINISHED."""
        from mlflow.entities import Metric

        final = flatten_metrics(json.loads((self.run_dir / "metrics.json").read_text()))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, self.step) for k, v in final.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's per-batch limit on metrics
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        names = list(ARTIFACTS) + (["checkpoints/best.pt"] if self.log_checkpoints else [])
        for name in names:
            path, folder = self.run_dir / name, str(Path(name).parent)
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path=None if folder == "." else folder)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def _is_file_store(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1


def _allow_file_store() -> None:
    # recent MLflow 3 releases refuse the file store unless opted in; it is the one backend needing no database
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


@contextlib.contextmanager
def track_run(recipe: Recipe, run_dir: Path, resume: bool, step: int) -> Iterator[MlflowTracker | None]:
    """The run's tracker for the block (None when ``tracking.mlflow`` is off); FINISHED after the block, else
    KILLED (Ctrl-C, resumable) or FAILED."""
    if not recipe.tracking.mlflow:
        yield None
        return
    tracker = MlflowTracker.open(recipe, run_dir, resume, step)
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.finish()
