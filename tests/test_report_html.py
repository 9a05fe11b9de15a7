"""The evaluation report end to end: a run directory (model built by cxrlab.train's own builders, simulated
predictions) -> metrics.json + self-contained report.html, rendered in headless Chromium; the CLI verbs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.data import schema

CLASSES = list(schema.FINDINGS)
TASKS = [{"kind": "diagnosis", "classes": CLASSES}, {"kind": "opacity"}]


def _simulated_predictions(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    patients = sorted(df[schema.PATIENT_ID].unique())
    split_of = {p: ("train", "train", "train", "val", "test")[i % 5] for i, p in enumerate(patients)}
    pred = df[[schema.IMAGE, schema.PATIENT_ID, schema.SOURCE_DATASET, schema.FINDING, schema.OPACITY_RIGHT,
               schema.OPACITY_LEFT]].copy()
    pred["split"] = pred[schema.PATIENT_ID].map(split_of)
    truth = pred[schema.FINDING].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    logits = rng.normal(0, 1, (len(pred), len(CLASSES))) + 2.0 * np.eye(len(CLASSES))[truth]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for i, c in enumerate(CLASSES):
        pred[f"prob_{c}"] = probs[:, i]
    pred["pred_diagnosis"] = np.array(CLASSES, dtype=object)[probs.argmax(1)]
    for col in (schema.OPACITY_RIGHT, schema.OPACITY_LEFT):
        grade = np.clip(pred[col].to_numpy() + rng.choice([-1, 0, 0, 0, 1], len(pred)), 0, 3)
        onehot = np.eye(4)[grade] * 0.7 + 0.075
        for g in range(4):
            pred[f"prob_{col}_{g}"] = onehot[:, g]
        pred[f"pred_{col}"] = grade
    return pred


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory, phantom_manifest) -> Path:
    """A run directory as cxrlab.train writes it, with an (untrained) model rebuilt from its recipe."""
    from cxrlab.recipes import load_recipe, save_recipe
    from cxrlab.train.inputs import InputPipeline
    from cxrlab.train.trainer import build_model, build_tasks

    run = tmp_path_factory.mktemp("run")
    recipe = load_recipe("phantom-diagnosis", [])
    recipe = load_recipe({**recipe.model_dump(mode="json"), "tasks": TASKS})
    pipeline = InputPipeline(recipe.input)
    tasks = build_tasks(recipe, pipeline)
    model, _ = build_model(recipe, tasks, pipeline)
    save_recipe(recipe, run / "recipe.yaml")
    (run / "checkpoints").mkdir()
    torch.save({"model": model.state_dict()}, run / "checkpoints" / "best.pt")
    (run / "model.json").write_text(json.dumps({"tasks": tasks.config(), "roi": "none", "per_image": 1}))
    pd.DataFrame({"epoch": range(1, 6), "train_loss": np.linspace(1.4, 0.5, 5), "val_loss": np.linspace(1.3, 0.8, 5),
                  "val_accuracy": np.linspace(0.3, 0.7, 5)}).to_csv(run / "history.csv", index=False)
    pred = _simulated_predictions(phantom_manifest.df, np.random.default_rng(0))
    pred.to_parquet(run / "predictions.parquet", index=False)
    return run


@pytest.fixture(scope="module")
def readers_file(tmp_path_factory, phantom_manifest) -> Path:
    """Two simulated readers grading each lung, one of them off by one grade on a third of the lungs."""
    rng = np.random.default_rng(1)
    df = phantom_manifest.df
    table = pd.DataFrame({"image": df[schema.IMAGE]})
    for col in (schema.OPACITY_RIGHT, schema.OPACITY_LEFT):
        table[f"{col}@reader_a"] = df[col]
        table[f"{col}@reader_b"] = np.clip(df[col] + rng.choice([-1, 0, 0], len(df)), 0, 3)
    path = tmp_path_factory.mktemp("readers") / "readers.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, phantom_run, phantom_root, readers_file) -> Path:
    from cxrlab.evaluate import build_report

    return build_report(phantom_run, data=phantom_root / "manifest.csv", readers=readers_file,
                        out=tmp_path_factory.mktemp("evaluation"), n_boot=50, per_class=1, max_hcs_images=16)


def test_metrics_json_holds_every_section(report):
    m = json.loads((report.parent / "metrics.json").read_text())
    assert m["eval_split"] == "test"
    assert set(m["targets"]) == {"diagnosis", schema.OPACITY_RIGHT, schema.OPACITY_LEFT}
    diag = m["targets"]["diagnosis"]
    assert diag["kind"] == "multiclass" and set(diag["splits"]) == {"val", "test"}
    auc = diag["splits"]["test"]["metrics"]["macro_auc"]
    assert auc["low"] <= auc["value"] <= auc["high"]
    assert "sex" in diag["subgroups"] and "age" in diag["subgroups"]
    opacity = m["targets"][schema.OPACITY_RIGHT]["splits"]["test"]["metrics"]
    assert {"macro_mae", "kappa_quadratic", "none_vs_any.f1", "severe.f1"} <= set(opacity)
    rows = m["agreement"]["opacity"]["rows"]
    kinds = {(r["reference"], r["other"]): r for r in rows}
    assert kinds[("reader_a", "reader_b")]["kind"] == "reader-reader"
    assert kinds[("reader_a", "model")]["kind"] == "model-reader"
    assert kinds[("reader_a", "reader_b")]["mae"]["value"] > 0  # reader_b disagrees on some lungs
    summary = m["data_summary"]
    assert sum(s["images"] for s in summary.values()) == sum(s["images"] for s in summary.values() if s)
    assert summary["test"]["patients"] > 0 and "phantom" in summary["test"]["sources"]
    hcs = m["hcs"]["per_target"]["diagnosis"]
    assert m["hcs"]["per_target"]["opacity"]["heads"] == ["opacity:opacity_right", "opacity:opacity_left"]
    assert 0 <= hcs["macro"] <= 1 and sum(hcs["n"].values()) == len(hcs["per_image"]) > 0
    assert all(0 <= r["hcs"] <= 1 and r["class"] in CLASSES for r in hcs["per_image"])
    assert re.fullmatch(r"[0-9a-f]{16}", m["data_fingerprint"])
    assert m["software"]["scikit-learn"] and m["run"]["training_seed"] == 0


def test_report_is_self_contained(report):
    html = report.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 10  # ROC, PR, confusion, calibration, learning curves, overlays
    assert not re.search(r'(src|href)="(https?:|file:|/)', html)  # nothing outside the file
    png = np.frombuffer(base64.b64decode(images[0]), np.uint8)
    assert cv2.imdecode(png, cv2.IMREAD_COLOR) is not None
    for section in ("Data summary", "Subgroups", "Reader agreement", "Learning curves", "Gallery", "Recipe",
                    "data fingerprint"):
        assert section in html, section


def _browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _browser()
    if browser is None:
        msg = "NO HEADLESS BROWSER FOUND (apt-get install -y chromium): the report was NOT checked in a browser"
        print(f"\n{'!' * 20} {msg} {'!' * 20}", file=sys.stderr)
        pytest.skip(msg)
    # a probe appended to a copy: every <img> must have decoded (naturalWidth > 0) and no script error fired
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", """<script>
window.onerror = function (m) { document.title = 'JSERROR ' + m; };
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  if (!document.title.startsWith('JSERROR')) { document.title = 'IMAGES ' + imgs.length + ' BROKEN ' + broken; }
});
</script></body>"""))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    n_images, broken = map(int, re.fullmatch(r"IMAGES (\d+) BROKEN (\d+)", title.strip()).groups())
    assert n_images >= 10 and broken == 0, title
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    rgb = cv2.imread(str(shot))[:, :, ::-1]
    # matplotlib's default blue (#1f77b4) lines and the Blues colormap of the confusion matrix are on screen
    blue = (np.abs(rgb.astype(int) - [31, 119, 180]).sum(axis=2) < 40).sum()
    assert blue > 200, f"no rendered figure in the screenshot ({blue} plot-blue pixels)"


def test_cli_evaluate_and_explain(phantom_run, phantom_root, tmp_path):
    from typer.testing import CliRunner

    from cxrlab.cli.main import app

    runner = CliRunner()
    out = tmp_path / "ev"
    res = runner.invoke(app, ["evaluate", str(phantom_run), "--out", str(out), "--n-boot", "20", "--no-gallery"])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file() and json.loads((out / "metrics.json").read_text())["n_boot"] == 20
    images = sorted((phantom_root / "images").glob("*.png"))[:2]
    res = runner.invoke(app, ["explain", str(phantom_run), *map(str, images), "--out", str(tmp_path / "cam"),
                              "--data", str(phantom_root / "manifest.csv"), "--method", "gradcam++"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "cam" / "explain.json").read_text())
    assert len(summary["images"]) == 2 and summary["head"] == "diagnosis"
    for item in summary["images"]:
        assert 0 <= item["hcs"] <= 1 and abs(sum(item["probs"]) - 1) < 1e-4
        overlay = cv2.imread(str(tmp_path / "cam" / item["overlay"]))
        assert overlay is not None and overlay.shape[0] == 64  # the model's input frame (recipe size 64)


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from cxrlab.cli import main as cli

    monkeypatch.setattr(sys, "argv", ["cxrlab", "evaluate", str(tmp_path / "missing-run")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert "run directory does not exist" in capsys.readouterr().err
