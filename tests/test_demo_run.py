"""The demo (``make demo``) end to end in its fast mode: every step's outputs exist, agree with each other and are
sane; a re-run over an earlier demo folder overwrites it; a foreign folder is refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from cxrlab.data import schema
from cxrlab.data.manifest import load_manifest
from cxrlab.data.splits import join_split, load_split
from cxrlab.demo import MARKER, run_demo
from cxrlab.errors import InputError
from cxrlab.io import read_image


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], str]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    # an earlier demo left finished runs behind: the trainers would refuse them unless the demo overwrites
    (out / "lung" / "run" / "checkpoints").mkdir(parents=True)
    (out / "lung" / "run" / "checkpoints" / "last.pt").write_bytes(b"old")
    (out / "diagnosis" / "checkpoints").mkdir(parents=True)
    (out / "diagnosis" / "checkpoints" / "last.pt").write_bytes(b"old")
    (out / "severity" / "run").mkdir(parents=True)
    (out / "severity" / "run" / "severity.json").write_text("{}")
    (out / MARKER).write_text("earlier demo\n")
    text = io.StringIO()
    outputs = run_demo(out, fast=True, console=Console(file=text, width=240, color_system=None))
    return out, outputs, text.getvalue()


def test_every_output_exists_and_is_recorded(demo):
    out, outputs, _ = demo
    for name, path in outputs.items():
        assert path.exists(), f"{name}: {path} missing"
    record = json.loads((out / "demo.json").read_text())
    assert set(record["outputs"]) == set(outputs) - {"record"}
    assert record["seconds"]["total"] >= sum(v for k, v in record["seconds"].items() if k != "total") - 1


def test_data_imported_validated_and_split_by_patient(demo):
    _, outputs, _ = demo
    manifest = load_manifest(outputs["manifest"])
    assert manifest.df[schema.SOURCE_DATASET].eq("phantom").all()
    assert all(Path(p).is_file() for p in manifest.df[schema.IMAGE])
    split = load_split(outputs["split"])  # raises if a patient is in two parts
    assert sorted(split[schema.IMAGE]) == sorted(manifest.df[schema.IMAGE])
    assert set(split["split"]) == {"train", "val", "test"}
    parts = join_split(manifest.df, split)
    assert set(manifest.df.loc[parts == "test", schema.FINDING]) == set(schema.FINDINGS)
    validation = pd.read_csv(outputs["data"] / "validation.csv")
    assert "error" not in set(validation["severity"])
    stats = json.loads(outputs["stats"].read_text())
    per_split = {row[schema.FINDING]: row for row in stats["classes per split"]}
    assert per_split["total"]["total"] == len(manifest)


def _parts(path: Path) -> dict[str, str]:
    df = pd.read_csv(path, dtype={schema.PATIENT_ID: str})
    return dict(zip(df[schema.PATIENT_ID], df["split"]))


def test_every_model_uses_the_demo_split(demo):
    _, outputs, _ = demo
    demo_parts = _parts(outputs["split"])
    for run_split in (outputs["lung_run"] / "split.csv", outputs["diagnosis_run"] / "split.csv",
                      outputs["severity_run"] / "disease" / "split.csv"):
        parts = _parts(run_split)
        assert parts and all(demo_parts[p] == s for p, s in parts.items()), run_split


def test_lung_run_and_overlays(demo):
    _, outputs, _ = demo
    run = outputs["lung_run"]
    assert (run / "checkpoints" / "best.pt").stat().st_size > 10_000  # a real model, not the planted file
    test = [p for p, s in zip(*pd.read_csv(outputs["split"])[[schema.IMAGE, "split"]].to_numpy().T) if s == "test"]
    overlays = sorted(outputs["lung_overlays"].glob("*.png"))
    assert len(overlays) == len(test)
    from PIL import Image

    with Image.open(overlays[0]) as im:
        image, _ = read_image(outputs["data"] / "phantom" / "images" / overlays[0].name)
        assert im.mode == "RGB" and im.size == image.shape[::-1]
        rgb = np.asarray(im)
    assert (rgb[..., 0] != rgb[..., 1]).any(), "no coloured contour drawn"


def test_diagnosis_run_predicts_every_image(demo):
    _, outputs, _ = demo
    pred = pd.read_parquet(outputs["diagnosis_run"] / "predictions.parquet")
    manifest = load_manifest(outputs["manifest"])
    assert len(pred) == len(manifest)
    probs = pred[[c for c in pred.columns if c.startswith("prob_")]].to_numpy(float)
    assert probs.shape[1] == len(schema.FINDINGS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_severity_scores_test_images(demo):
    _, outputs, _ = demo
    run = outputs["severity_run"]
    assert json.loads((run / "severity.json").read_text())["lung_run"]
    table = pd.read_csv(outputs["severity_predictions"])
    split = pd.read_csv(outputs["split"])
    assert len(table) == int((split["split"] == "test").sum())
    scored = table["pred_brixia_global"].dropna()
    assert len(scored) and scored.between(0, 18).all()
    assert len(list(outputs["severity_overlays"].glob("*.png"))) == table["error"].isna().sum()
    metrics = json.loads(outputs["severity_metrics"].read_text())
    assert metrics["disease"]["n"] > 0 and 0 <= metrics["disease"]["dice_pooled"] <= 1
    assert metrics["brixia"]["n_images"] == len(scored)


def test_report_and_service_config(demo):
    _, outputs, text = demo
    html = outputs["report"].read_text()
    assert outputs["report"].name == "report.html" and "data:image/png;base64," in html
    assert "phantom-diagnosis" in html
    from cxrlab.serve.config import load_service_config

    cfg = load_service_config(outputs["service_config"])
    models = cfg.models.present()
    assert models["lung"] == outputs["lung_run"].resolve()
    assert models["diagnosis"] == outputs["diagnosis_run"].resolve()
    assert models["opacity"] == outputs["severity_run"].resolve()
    assert cfg.quality.run == outputs["quality_run"].resolve()
    assert str(outputs["report"]) in text
    assert text.rstrip().splitlines()[-1].startswith("Start the viewer: make serve")


def test_quality_gate_judges_the_demo_examples(demo):
    _, outputs, text = demo
    examples = json.loads(outputs["quality_examples"].read_text())
    assert examples["frontal"]["verdict"] == "ok"
    assert examples["lateral"]["view"] == "lateral" and examples["lateral"]["verdict"] == "refuse"
    assert examples["inverted"]["inverted"] is True
    assert "lateral → refuse" in text


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not made by `cxrlab demo`"):
        run_demo(tmp_path, fast=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
