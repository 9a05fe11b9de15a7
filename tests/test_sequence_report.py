"""The HTML report of `cxrlab sequence cv` on phantom courses: metric table with CIs and the baselines, Kaplan–Meier
curves by predicted-risk group, patient timelines whose per-film outputs are the model's prediction on the course
truncated at that film, the sequence model's Grad-CAM when the film CNN that made the embeddings can be rebuilt
(plain films, with the reason, when it cannot), and the research-use notice."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.data.phantom import generate_phantom
from cxrlab.evaluate.sequence_report import build_sequence_report, patient_survival, sequence_timelines
from cxrlab.evaluate.template import RESEARCH_NOTICE
from cxrlab.retrieval import write_embeddings
from cxrlab.train.sequence import predict_sequences

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()[:10]
SMALL = ["--set", "model.proj=8", "--set", "model.hidden=8", "--set", "train.epochs=4", "--set", "train.folds=3",
         "--set", "train.batch_size=16", "--n-boot", "50"]


@pytest.fixture(scope="module")
def phantom_emb(tmp_path_factory):
    """Phantom courses (64 px films on disk) with each film's recorded lung involvement (plus noise) as its
    vector, recorded as made by a bare backbone."""
    tmp = tmp_path_factory.mktemp("seqrep")
    root = generate_phantom(tmp / "ph", n_patients=45, size=64, seed=5, max_studies=5).parent
    df = pd.read_csv(root / "manifest.csv")
    df["image_path"] = [str(root / p) for p in df["image"]]
    rng = np.random.default_rng(0)
    x = df[["involvement_right", "involvement_left"]].to_numpy(np.float32)
    x = np.concatenate([x, x.mean(1, keepdims=True)], 1) + rng.normal(0, 0.03, (len(df), 3)).astype(np.float32)
    info = {"source": {"kind": "backbone", "backbone": "efficientnet_lite0", "weights": "imagenet", "size": 224}}
    return write_embeddings(tmp / "emb.parquet", x, df, info), tmp


def _cv(emb, out, *extra):
    result = CliRunner().invoke(app, ["sequence", "cv", "cs230-survival", str(emb), "--out", str(out), *SMALL,
                                      *extra])
    assert result.exit_code == 0, result.output
    return out / "report.html"


def _images(html: str, cls: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(rf'<figure class="{cls}"[^>]*><img [^>]*src="data:image/png;base64,'
                                                   r'([A-Za-z0-9+/=]+)"', html)]


def test_binary_head_report_has_metrics_km_timelines_and_notice(phantom_emb):
    emb, tmp = phantom_emb
    path = _cv(emb, tmp / "icu", "--set", "outcome.column=went_icu", "--set", "outcome.positive=null",
               "--set", "outcome.negative=null", "--timelines", "2")
    html = path.read_text()
    assert RESEARCH_NOTICE in html
    metrics = json.loads((tmp / "icu" / "metrics.json").read_text())
    for key in ("lstm", "last", "mean", "lstm-last", "lstm-mean"):  # every model and paired difference
        assert f"({key})" in html
    assert f"{metrics['estimates']['lstm']['value']:.3f}" in html
    km = _images(html, "km")
    assert km and all(png.startswith(b"\x89PNG") for png in km)  # binary head: KM from the recorded survival
    timelines = _images(html, "timeline")
    assert len(timelines) == 2 and all(png.startswith(b"\x89PNG") for png in timelines)
    # hand-made 3-d vectors labelled as Lite0's: the rebuilt CNN cannot explain them, and the caption says why
    assert "films without heatmaps" in html and "1280-d vectors, the embeddings hold 3-d" in html


def test_timeline_outputs_are_the_model_on_the_truncated_course(phantom_emb):
    emb, tmp = phantom_emb
    out = tmp / "surv"
    path = _cv(emb, out, "--set", "outcome.kind=survival", "--set", "outcome.positive=null",
               "--set", "outcome.negative=null", "--timelines", "1")
    html = path.read_text()
    assert _images(html, "km") and len(_images(html, "timeline")) == 1 and "log-risk" in html
    tl = sequence_timelines(out, n_patients=3)
    assert len(tl["patients"]) == 3
    preds = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    folds = set(preds.set_index("patient_id").loc[[p["patient_id"] for p in tl["patients"]], "fold"])
    assert tl["n_train"] == int((~preds["fold"].isin(folds)).sum())  # trained without the shown patients' fold
    for seq, p in zip(tl["sequences"], tl["patients"]):
        assert p["offsets"] == sorted(p["offsets"]) and len(p["outputs"]) == len(seq.offsets) >= 1
        for t in range(1, len(seq.offsets) + 1):
            alone = predict_sequences(tl["model"], [seq.prefix(t)], tl["config"])[0]
            assert p["outputs"][t - 1] == pytest.approx(float(alone), abs=1e-5)
    # survival time per patient as the survival head defines it: days from the first film
    meta = pd.DataFrame({"patient_id": ["A", "A", "B"], "offset_days": [2.0, 5.0, 0.0],
                         "survival_days": [10.0, 10.0, np.nan], "death_event": [1, 1, 0]})
    assert patient_survival(meta, "survival_days", "death_event").to_dict("records") == [
        {"patient_id": "A", "time": 8.0, "event": 1}]


def test_report_without_the_embeddings_keeps_the_metrics(phantom_emb, tmp_path):
    emb, tmp = phantom_emb
    out = tmp / "icu"  # from the first test, or made here when run alone
    if not (out / "metrics.json").is_file():
        _cv(emb, out, "--set", "outcome.column=went_icu", "--set", "outcome.positive=null",
            "--set", "outcome.negative=null", "--no-report")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["embeddings"] == str(emb.resolve()) and metrics["min_films"] == 1
    metrics["embeddings"] = str(tmp_path / "gone.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "predictions.csv").write_bytes((out / "predictions.csv").read_bytes())
    html = build_sequence_report(tmp_path).read_text()
    assert "Not available" in html and RESEARCH_NOTICE in html and "(lstm-last)" in html
    assert not _images(html, "timeline")


def _colour(png: bytes) -> float:
    """Mean spread between the RGB channels (0 for a grey picture)."""
    import cv2

    rgb = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(float)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


def test_timelines_show_the_sequence_models_gradcam_through_the_embedding_run(tmp_path, phantom_emb):
    from cxrlab.recipes import load_recipe
    from cxrlab.retrieval import embed
    from cxrlab.train.trainer import train

    manifest = generate_phantom(tmp_path / "ph", n_patients=24, size=64, seed=5, max_studies=4)
    recipe = load_recipe("phantom-diagnosis").model_dump()
    recipe["split"]["stratify"] = None
    recipe["train"].update(stages=[{"epochs": 1, "train_blocks": "all", "lr": 0.003}], num_workers=0,
                           cache_dir=str(tmp_path / "cache"))
    train(recipe, str(manifest), tmp_path / "run", show_progress=False)
    emb = embed(tmp_path / "run", manifest.parent, tmp_path / "emb.parquet")
    result = CliRunner().invoke(app, ["sequence", "cv", "cs230-survival", str(emb), "--out", str(tmp_path / "cv"),
                                      "--set", "outcome.column=went_icu", "--set", "outcome.positive=null",
                                      "--set", "outcome.negative=null", *SMALL, "--set", "train.folds=2",
                                      "--timelines", "1"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "cv" / "report.html").read_text()
    assert "gradcam of the sequence model&#39;s output after each film" in html
    assert "through the film CNN that made the embeddings (run run)" in html and "without heatmaps" not in html
    (cam,) = _images(html, "timeline")
    grey = _images((phantom_emb[1] / "icu" / "report.html").read_text(), "timeline") \
        if (phantom_emb[1] / "icu" / "report.html").is_file() else []
    assert _colour(cam) > 20  # heatmaps on the films
    assert all(_colour(png) < 5 for png in grey)  # the backbone report's films are plain grey
