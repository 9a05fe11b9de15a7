"""The image-quality gate on the phantom: lateral films, inverted grey levels, non-chest pictures; the CLI,
exclusions, batch prediction and the service use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlab.data import schema
from cxrlab.data.exclusions import ExclusionConfig, apply_exclusions
from cxrlab.data.manifest import load_manifest
from cxrlab.data.phantom import generate_phantom, render_sample
from cxrlab.errors import InputError
from cxrlab.io import write_png
from cxrlab.quality import QualityGate, train_quality_gate, view_labels
from cxrlab.quality.batch import QUALITY_COLUMNS
from cxrlab.quality.nonchest import skimage_images

CLI = str(Path(sys.executable).parent / "cxrlab")
GATE_CONFIG = {"size": 96, "batch_size": 64}


@pytest.fixture(scope="module")
def quality_phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quality_phantom")
    return generate_phantom(root, n_patients=24, size=128, seed=5, max_studies=2, lateral_prob=0.5)


@pytest.fixture(scope="module")
def gate_run(quality_phantom, tmp_path_factory) -> Path:
    return train_quality_gate([quality_phantom], tmp_path_factory.mktemp("qrun") / "gate", GATE_CONFIG)


@pytest.fixture(scope="module")
def gate(gate_run) -> QualityGate:
    return QualityGate.load(gate_run)


def test_phantom_laterals_leave_frontal_films_unchanged(tmp_path):
    plain = load_manifest(generate_phantom(tmp_path / "a", n_patients=3, size=64, seed=2, max_studies=2)).df
    with_lat = load_manifest(generate_phantom(tmp_path / "b", n_patients=3, size=64, seed=2, max_studies=2,
                                              lateral_prob=1.0)).df
    lateral = with_lat[with_lat[schema.VIEW] == "L"]
    assert len(lateral) == len(plain)  # every study got one
    assert lateral[schema.MASK_LUNGS].isna().all() and lateral[schema.OPACITY_RIGHT].isna().all()
    frontal = with_lat[with_lat[schema.VIEW] != "L"].reset_index(drop=True)
    for a, b in zip(plain[schema.IMAGE], frontal[schema.IMAGE]):
        assert Path(a).read_bytes() == Path(b).read_bytes()


def test_view_labels_follow_the_manifest():
    df = pd.DataFrame({
        schema.VIEW: ["PA", "L", None, "?", "AP Supine", "not recorded", "AP/PA (pediatric, not recorded)"],
        schema.SOURCE_DATASET: ["a", "a", "a", "a", "a", "b", "c"],
    })
    # source a has laterals, so its missing/'?' views stay unknown; b and c hold no lateral at all: frontal
    assert view_labels(df).tolist() == [0, 1, -1, -1, 0, 0, 0]


def test_gate_recognises_laterals_inversions_and_non_chest_pictures(gate, gate_run):
    frontal = render_sample("covid19", severity=0.5, size=128, seed=41)["image"]
    lateral = render_sample(view="L", size=128, seed=42)["image"]
    camera = dict(skimage_images())["camera"]
    ok, lat, inv, photo = gate.check_many([frontal, lateral, 1.0 - frontal, camera], ["f", "l", "i", "c"])
    assert ok.verdict == "ok" and ok.view == "frontal" and not ok.inverted, ok
    assert lat.view == "lateral" and lat.verdict == "refuse" and any("lateral" in r for r in lat.reasons)
    assert inv.inverted and inv.view == "frontal" and inv.verdict == "warn"
    np.testing.assert_allclose(inv.corrected, frontal, atol=1e-6)  # put right, so analysis sees the real film
    assert photo.verdict == "refuse" and any("not a chest radiograph" in r for r in photo.reasons)
    assert photo.ood_score > gate.models.ood_refuse > ok.ood_score
    # a warn policy for laterals keeps the reason but does not refuse
    lenient = QualityGate.load(gate_run, lateral_policy="warn")
    assert lenient.check(lateral).verdict == "warn"


def test_run_records_held_out_metrics_and_what_it_saw(gate_run, quality_phantom):
    meta = json.loads((gate_run / "quality.json").read_text())
    assert meta["kind"] == "quality" and meta["config"]["size"] == GATE_CONFIG["size"]
    seen = meta["trained_on"]
    manifest = load_manifest(quality_phantom).df
    assert seen["images"] == len(manifest) and seen["lateral"] == int((manifest[schema.VIEW] == "L").sum())
    assert set(seen["patients"]) == set(manifest[schema.PATIENT_ID].astype(str))
    val = meta["validation"]
    assert val["n_lateral"] >= 1  # patients with laterals are spread over both parts
    assert val["view"]["accuracy"]["value"] >= 0.9 and val["inversion"]["accuracy"]["value"] >= 0.9
    assert val["view"]["accuracy"]["low"] <= val["view"]["accuracy"]["value"]
    assert val["ood"]["nonchest_refused"] >= 0.8


def test_load_refuses_foreign_or_broken_runs(gate_run, tmp_path):
    with pytest.raises(InputError, match="not a quality run"):
        QualityGate.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    meta = json.loads((gate_run / "quality.json").read_text())
    (broken / "quality.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(InputError, match="another format"):
        QualityGate.load(broken)
    (broken / "quality.json").write_text(json.dumps(meta))
    (broken / "gate.joblib").write_bytes((gate_run / "gate.joblib").read_bytes()[:100])  # interrupted copy
    with pytest.raises(InputError, match="cannot be read"):
        QualityGate.load(broken)


def test_cli_check_json_one_object_per_image(gate_run, tmp_path):
    folder = tmp_path / "films"
    write_png(folder / "frontal.png", render_sample(size=128, seed=7)["image"])
    write_png(folder / "sub" / "lateral.png", render_sample(view="L", size=128, seed=8)["image"])
    proc = subprocess.run([CLI, "quality", "check", str(gate_run), str(folder), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = {Path(r["image"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == {"frontal.png", "lateral.png"}
    for r in results.values():
        assert {"image", "view", "view_prob", "inverted", "ood_score", "verdict", "reasons"} <= set(r)
    assert results["frontal.png"]["verdict"] == "ok"
    assert results["lateral.png"]["view"] == "lateral" and results["lateral.png"]["verdict"] == "refuse"


def test_exclusions_drop_refused_films_and_add_quality_columns(gate_run, quality_phantom):
    m = load_manifest(quality_phantom)
    m.df[schema.VIEW] = "unknown"  # the view column no longer tells: only the gate can
    result = apply_exclusions(m, ExclusionConfig(min_age=None, frontal_only=False, quality_run=str(gate_run)))
    dropped = result.report[result.report["criterion"] == "quality_gate"]
    lateral_files = {p for p in load_manifest(quality_phantom).df.query("view == 'L'")[schema.IMAGE]}
    assert set(dropped["image"]) == lateral_files
    assert set(QUALITY_COLUMNS) <= set(result.kept.df.columns)
    assert (result.kept.df["quality_verdict"] != "refuse").all()


def test_batch_prediction_skips_refused_and_corrects_inverted(service_runs, gate_run, tmp_path):
    from cxrlab.train import load_run

    model = load_run(service_runs["diagnosis"])
    frontal = render_sample("covid19", severity=0.6, size=128, seed=11)["image"]
    write_png(tmp_path / "a_frontal.png", frontal)
    write_png(tmp_path / "b_inverted.png", 1.0 - frontal)
    write_png(tmp_path / "c_lateral.png", render_sample(view="L", size=128, seed=12)["image"])
    paths = [tmp_path / n for n in ("a_frontal.png", "b_inverted.png", "c_lateral.png")]
    table = model.predict(paths, quality=gate_run)
    pred_cols = [c for c in table.columns if c not in QUALITY_COLUMNS and c not in (schema.IMAGE, schema.PATIENT_ID)]
    assert pred_cols and table["quality_verdict"].tolist() == ["ok", "warn", "refuse"]
    assert table.loc[2, pred_cols].isna().all()  # the lateral gets no prediction
    prob_cols = [c for c in pred_cols if c.startswith("prob")]
    np.testing.assert_allclose(table.loc[1, prob_cols].astype(float), table.loc[0, prob_cols].astype(float),
                               atol=1e-4)  # the inverted copy is predicted as the film itself
    kept = model.predict(paths, quality=gate_run, keep_failing=True)
    assert kept[pred_cols].notna().all().all()


@pytest.fixture(scope="module")
def gated_service(service_runs, gate_run, tmp_path_factory):
    """The tiny service with the gate: laterals refused, non-chest pictures only warned about."""
    from fastapi.testclient import TestClient

    from cxrlab.serve import create_app, load_service_config, write_service_config
    from cxrlab.serve.pipeline import AnalysisPipeline

    runs = {role: service_runs[role] for role in ("lung", "diagnosis", "icu", "opacity")}
    path = write_service_config(tmp_path_factory.mktemp("gated") / "service.yaml", runs["lung"], runs["diagnosis"],
                                runs["icu"], runs["opacity"],
                                quality={"run": str(gate_run), "lateral": "refuse", "non_chest": "warn"})
    config = load_service_config(path)
    with TestClient(create_app(config, pipeline=AnalysisPipeline.from_config(config))) as client:
        yield client


def test_service_refuses_laterals_with_a_reason(gated_service):
    from cxrlab.serve.samples import encode_png

    lateral = render_sample(view="L", size=128, seed=21)["image"]
    r = gated_service.post("/v1/analyze", files={"file": ("x.png", encode_png(lateral))})
    assert r.status_code == 422
    assert "lateral view" in r.json()["error"]["reason"]


def test_service_corrects_inverted_films_and_says_so(gated_service):
    from cxrlab.serve.samples import encode_png

    film = render_sample("covid19", severity=0.6, size=128, seed=22)["image"]
    plain = gated_service.post("/v1/analyze", files={"file": ("a.png", encode_png(film))}).json()
    flipped = gated_service.post("/v1/analyze", files={"file": ("b.png", encode_png(1.0 - film))}).json()
    assert plain["quality"]["verdict"] == "ok" and plain["quality"]["inverted"] is False
    assert flipped["quality"]["inverted"] is True and flipped["quality"]["verdict"] == "warn"
    assert any("inverted grey levels" in n and "corrected" in n for n in flipped["quality"]["notes"])
    assert flipped["diagnosis"]["probabilities"] == pytest.approx(plain["diagnosis"]["probabilities"], abs=1e-3)


def test_service_warn_policy_shows_non_chest_without_scores(gated_service):
    from cxrlab.serve.samples import encode_png

    camera = dict(skimage_images())["camera"]
    r = gated_service.post("/v1/analyze", files={"file": ("c.png", encode_png(camera))})
    assert r.status_code == 200
    rep = r.json()
    assert rep["quality"]["verdict"] == "refuse"
    assert any("not a chest radiograph" in n for n in rep["quality"]["notes"])
    assert not {"diagnosis", "severity", "icu"} & set(rep)  # no finding or score that could look real
    cards = {c["role"]: c for c in gated_service.get("/v1/models").json()["models"]}
    assert cards["quality"]["non_chest"] == "warn" and cards["quality"]["lateral"] == "refuse"


def test_service_without_gate_says_not_checked(service_runs):
    from fastapi.testclient import TestClient

    from cxrlab.serve import create_app, load_service_config
    from cxrlab.serve.samples import encode_png

    with TestClient(create_app(load_service_config(service_runs["config"]))) as client:
        rep = client.post("/v1/analyze", files={"file": ("a.png", encode_png(render_sample(size=128)["image"]))})
    assert rep.json()["quality"]["gate"].startswith("not checked")


def test_batch_commands_write_quality_columns_and_skip_refused(service_runs, gate_run, tmp_path):
    folder = tmp_path / "films"
    write_png(folder / "a_frontal.png", render_sample(size=128, seed=31)["image"])
    write_png(folder / "b_lateral.png", render_sample(view="L", size=128, seed=32)["image"])
    seg = subprocess.run([CLI, "segment", "predict", str(folder), "--lung-model", str(service_runs["lung"]),
                          "--out", str(tmp_path / "seg"), "--quality", str(gate_run), "--no-overlays"],
                         capture_output=True, text=True, timeout=300)
    assert seg.returncode == 0, seg.stdout + seg.stderr
    assert "1 refused by the quality gate" in " ".join(seg.stdout.split())
    table = load_manifest(tmp_path / "seg" / "manifest.csv").df.set_index(
        load_manifest(tmp_path / "seg" / "manifest.csv").df[schema.IMAGE].map(lambda p: Path(p).name))
    assert table.loc["b_lateral.png", "quality_verdict"] == "refuse"
    assert pd.isna(table.loc["b_lateral.png", schema.MASK_RIGHT_LUNG])  # not segmented
    assert table.loc["a_frontal.png", "quality_verdict"] == "ok"
    assert Path(table.loc["a_frontal.png", schema.MASK_RIGHT_LUNG]).is_file()
    out = tmp_path / "pred.csv"
    pred = subprocess.run([CLI, "predict", str(service_runs["diagnosis"]), str(folder), "--out", str(out),
                           "--quality", str(gate_run)], capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stdout + pred.stderr
    rows = pd.read_csv(out).set_index(schema.IMAGE)
    prob = [c for c in rows.columns if c.startswith("prob")]
    lateral = [i for i in rows.index if i.endswith("b_lateral.png")][0]
    assert rows.loc[lateral, "quality_verdict"] == "refuse" and rows.loc[lateral, prob].isna().all()
    assert rows.drop(index=lateral)[prob].notna().all().all()


def test_training_drops_films_the_gate_refuses(quality_phantom, gate_run, tmp_path, monkeypatch):
    from cxrlab.train import train

    monkeypatch.setenv("CXRLAB_HOME", str(tmp_path / "home"))
    run = train("phantom-diagnosis", [quality_phantom], tmp_path / "run", show_progress=False,
                overrides=["train.num_workers=0", "input.size=32", f"data.quality={gate_run}",
                           "train.stages=[{epochs: 1, train_blocks: 0, lr: 0.01}]"])
    laterals = set(load_manifest(quality_phantom).df.query("view == 'L'")[schema.IMAGE])
    trained_on = set(pd.read_csv(run / "split.csv")[schema.IMAGE])
    assert laterals and not laterals & trained_on
    report = pd.read_csv(run / "quality_exclusions.csv")
    assert set(report.loc[report["criterion"] == "quality_gate", "image"]) == laterals
    assert str(gate_run) in (run / "recipe.yaml").read_text()  # the run records which gate filtered it


def test_severity_batch_does_not_score_refused_films(service_runs, gate_run, tmp_path):
    from cxrlab.data.inputs import resolve_inputs
    from cxrlab.severity.pipeline import SeverityPipeline

    write_png(tmp_path / "a_frontal.png", render_sample("covid19", severity=0.6, size=128, seed=51)["image"])
    write_png(tmp_path / "b_lateral.png", render_sample(view="L", size=128, seed=52)["image"])
    pipe = SeverityPipeline.from_run(service_runs["opacity"])
    table = pipe.predict_manifest(resolve_inputs([tmp_path]), quality=gate_run).set_index(schema.IMAGE)
    lateral = [i for i in table.index if str(i).endswith("b_lateral.png")][0]
    assert table.loc[lateral, "error"].startswith("refused by the quality gate: lateral view")
    scores = [c for c in table.columns if c.startswith("pred_")]
    assert scores and table.loc[lateral, scores].isna().all()
    assert table.drop(index=lateral)["quality_verdict"].eq("ok").all()
