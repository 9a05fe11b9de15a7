"""Optional MLflow tracking: params, per-epoch and final metrics and artifacts in a local store; the same MLflow
run continued by ``--resume``; nothing created when off; a clear error when MLflow is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxrlab.errors import ConfigError
from cxrlab.recipes import load_recipe
from cxrlab.train import train
from cxrlab.train.tracking import INSTALL_HINT, RUN_FILE, flatten_metrics, flatten_params, resolve_uri

TINY = ["train.num_workers=0", "input.size=32", "train.batch_size=16"]


@pytest.fixture(autouse=True)
def quiet_env(tmp_path, monkeypatch):
    # one intra-op thread on the shared CPU; a private cache; no tracking URI leaking in from the environment
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("CXRLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    torch.set_num_threads(previous)


def _client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    record = json.loads((run_dir / RUN_FILE).read_text())
    return MlflowClient(tracking_uri=record["tracking_uri"]), record


def test_tracking_logs_to_a_local_store_and_resume_continues_the_run(phantom_root, tmp_path):
    pytest.importorskip("mlflow")
    data = [phantom_root / "manifest.csv"]
    out = tmp_path / "run"
    sets = TINY + ["train.stages.0.epochs=3", "train.early_stopping_patience=5", "tracking.mlflow=true"]

    def kill(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("phantom-diagnosis", data, out, show_progress=False, overrides=sets, on_epoch_end=kill)
    client, record = _client(out)
    assert record["tracking_uri"] == (out / "mlruns").resolve().as_uri()  # the default: inside the run directory
    assert client.get_run(record["run_id"]).info.status == "KILLED"
    train("phantom-diagnosis", data, out, resume=True, show_progress=False)

    client, resumed = _client(out)
    assert resumed == record  # the same MLflow run, continued
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([record["experiment_id"]])) == 1
    params = run.data.params
    assert params["seed"] == "0" and params["model.backbone"] == "pasa_cnn"
    assert params["train.stages.0.epochs"] == "3" and params["tracking.mlflow"] == "true"
    assert json.loads(params["split.ratios"]) == [0.6, 0.2, 0.2]

    history = pd.read_csv(out / "history.csv")
    for column in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
        logged = client.get_metric_history(record["run_id"], column)
        assert [m.step for m in logged] == [1, 2, 3], column  # each epoch once, across the interruption
        assert [m.value for m in logged] == pytest.approx(history[column].tolist(), rel=1e-12)

    metrics = json.loads((out / "metrics.json").read_text())
    final = flatten_metrics(metrics)
    assert final["test.accuracy"] == metrics["test"]["accuracy"] and final["run.seed"] == 0
    assert {k: run.data.metrics[k] for k in final} == final
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert artifacts == {"recipe.yaml", "split.csv", "history.csv", "metrics.json"}  # no checkpoints by default
    local = Path(client.download_artifacts(record["run_id"], "metrics.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == metrics


def test_cli_mlflow_uri_logs_to_the_named_store(phantom_root, tmp_path):
    pytest.importorskip("mlflow")
    from typer.testing import CliRunner

    from cxrlab.cli.main import app

    store, out = tmp_path / "store", tmp_path / "cli"
    args = ["train", "phantom-diagnosis", "--data", str(phantom_root / "manifest.csv"), "--out", str(out),
            "--mlflow-uri", str(store)]
    for item in TINY + ["train.stages.0.epochs=1", "tracking.experiment=cli-test", "tracking.checkpoints=true"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    client, record = _client(out)
    assert record["tracking_uri"] == store.resolve().as_uri() and not (out / "mlruns").exists()
    assert client.get_experiment(record["experiment_id"]).name == "cli-test"
    assert [a.path for a in client.list_artifacts(record["run_id"], "checkpoints")] == ["checkpoints/best.pt"]


def test_no_tracking_creates_nothing_and_needs_no_mlflow(phantom_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing mlflow would now fail
    out = train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "plain", show_progress=False,
                overrides=TINY + ["train.stages.0.epochs=1"])
    assert (out / "metrics.json").is_file()
    assert not (out / RUN_FILE).exists() and not (out / "mlruns").exists()
    assert not list(tmp_path.rglob("mlruns"))


def test_missing_mlflow_is_a_clear_error_before_any_work(phantom_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"tracking\.mlflow.*" + INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "run", show_progress=False,
              overrides=TINY + ["tracking.mlflow=true"])
    assert not (tmp_path / "run").exists()


def test_tracking_keys_are_validated():
    recipe = load_recipe("phantom-diagnosis")
    assert recipe.tracking.mlflow is False and recipe.tracking.uri is None  # off by default
    with pytest.raises(ConfigError, match="tracking.server"):
        load_recipe("phantom-diagnosis", ["tracking.server=http://x"])
    with pytest.raises(ConfigError, match="tracking.mlflow"):
        load_recipe("phantom-diagnosis", ["tracking.mlflow=maybe"])


def test_default_store_is_local_unless_named(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert resolve_uri(None, run_dir) == (run_dir / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")  # a server: never by default
    assert resolve_uri(None, run_dir) == (run_dir / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "site-store"))
    assert resolve_uri(None, run_dir) == (tmp_path / "site-store").resolve().as_uri()
    assert resolve_uri("http://named.example", run_dir) == "http://named.example"  # explicitly named: used


def test_flatten_params_and_metrics():
    params = flatten_params({"seed": 0, "train": {"stages": [{"lr": 0.003}], "cache_dir": None},
                             "split": {"ratios": [0.7, 0.3]}, "data": {"filter": {}}, "name": "x"})
    assert params == {"seed": "0", "train.stages.0.lr": "0.003", "train.cache_dir": "null",
                      "split.ratios": "[0.7, 0.3]", "data.filter": "{}", "name": "x"}
    assert flatten_metrics({"test": {"auc": None, "n": 4, "f1": 0.5, "note": "x"}, "run": {"seed": 1}}) == \
        {"test.n": 4.0, "test.f1": 0.5, "run.seed": 1.0}
