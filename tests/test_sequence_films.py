"""The film CNN inside the sequence models: a fine-tuned CNN starts from exactly the embeddings' vectors, trains only
its last stages (its own copy per model), keeps the packing / prefix guarantees, and the sequence model's Grad-CAM
explains the very output reported after each film."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import logit
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.data.phantom import generate_phantom
from cxrlab.errors import ConfigError
from cxrlab.retrieval import embed, read_embeddings, write_embeddings
from cxrlab.retrieval.embeddings import Embedder
from cxrlab.train.sequence import (SequenceConfig, build_sequences, collate, cross_validate_sequences,
                                   fit_sequence_model, predict_sequences)
from cxrlab.train.sequence_films import FilmCNN, _FilmInCourse, film_store_for, sequence_film_cams

ICU = {"kind": "binary", "column": "went_icu"}
SMALL = {"hidden": 8, "proj": 32}


@pytest.fixture(scope="module")
def phantom_lite0(tmp_path_factory):
    """24 phantom patients' 64-px films embedded by ImageNet EfficientNet-Lite0 at 64 px (fp32)."""
    tmp = tmp_path_factory.mktemp("seqfilms")
    root = generate_phantom(tmp / "ph", n_patients=24, size=64, seed=5, max_studies=4).parent
    out = embed(Embedder.create("efficientnet_lite0", size=64, precision="fp32"), root / "manifest.csv",
                tmp / "emb.parquet")
    return read_embeddings(out), tmp


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_finetuned_cnn_starts_at_the_embeddings_and_trains_only_its_last_stage(phantom_lite0):
    emb, _ = phantom_lite0
    cfg = SequenceConfig(features={"finetune": True, "train_blocks": 1, "lr": 1e-3}, outcome=ICU, model=SMALL,
                         train={"epochs": 2, "batch_size": 8})
    seqs = build_sequences(emb, cfg)
    films = film_store_for(emb.info, cfg.features.train_blocks)
    assert films.frozen == films.cnn.n_stages - 1
    paths = [p for s in seqs for p in s.paths]
    with torch.no_grad():  # the CNN rebuilt from the file's source gives the file's own vectors
        start = films.cnn(films.activations(paths), start=films.frozen).numpy()
    assert np.allclose(start, np.concatenate([s.features for s in seqs]), atol=1e-4)
    shared_before = _params(films.cnn)
    model = fit_sequence_model(seqs, cfg, films=films)
    stages_before = [_params(st) for st in films.cnn.body.stages()]
    stages_after = [_params(st) for st in model.cnn.body.stages()]
    for before, after in zip(stages_before[:-1], stages_after[:-1]):  # frozen prefix untouched
        assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert any(not torch.equal(a, b) for a, b in zip(stages_before[-1], stages_after[-1]))  # last stage trained
    assert all(torch.equal(a, b) for a, b in zip(shared_before, _params(films.cnn)))  # the shared CNN is not


def test_finetuned_model_reads_only_the_films_up_to_each_point(phantom_lite0):
    emb, _ = phantom_lite0
    cfg = SequenceConfig(features={"finetune": True, "train_blocks": 2}, outcome=ICU, model=SMALL,
                         train={"epochs": 1, "batch_size": 8})
    seqs = build_sequences(emb, cfg)
    model = fit_sequence_model(seqs, cfg, films=film_store_for(emb.info, 2))
    together = predict_sequences(model, seqs, cfg)
    alone = np.concatenate([predict_sequences(model, [s], cfg) for s in seqs])
    assert np.allclose(together, alone, atol=1e-5)  # padding never enters
    steps = predict_sequences(model, seqs, cfg, per_step=True)
    for s, st in zip(seqs, steps):
        for t in range(1, len(s.offsets) + 1):
            assert predict_sequences(model, [s.prefix(t)], cfg)[0] == pytest.approx(st[t - 1], abs=1e-5)
    with pytest.raises(ConfigError, match="film CNN is needed"):
        fit_sequence_model(seqs, cfg)  # fine-tuning without the films is a clear error


def test_sequence_gradcam_explains_the_output_after_each_film(phantom_lite0):
    emb, _ = phantom_lite0
    cfg = SequenceConfig(outcome=ICU, model=SMALL, train={"epochs": 3, "batch_size": 8})
    seqs = build_sequences(emb, cfg)
    model = fit_sequence_model(seqs, cfg)  # trained on the frozen vectors
    cnn = FilmCNN.from_source(emb.info["source"])
    seq = max(seqs, key=lambda s: len(s.offsets))
    steps = predict_sequences(model, [seq], cfg, per_step=True)[0]
    gaps = collate([seq])["gaps"]
    feats = torch.from_numpy(np.asarray(seq.features, np.float32))
    for t, path in enumerate(seq.paths):  # the wrapped function Grad-CAM differentiates = the reported output
        x = torch.from_numpy(cnn.prepare({"image": _read(path)}).numpy())
        with torch.no_grad():
            out = _FilmInCourse(cnn.eval(), model.eval(), feats[:t], gaps[:, :t + 1])(x)
        assert float(out) == pytest.approx(float(logit(steps[t])), abs=1e-3)
    images, maps = sequence_film_cams(model, seq, cnn)
    assert len(maps) == len(seq.paths)
    for img, heat in zip(images, maps):
        assert heat.shape == img.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1
    # a map is all zero only where every location argues against the outcome (Grad-CAM's ReLU): not all films
    assert any(heat.std() > 0 for heat in maps)
    wrong = type(seq)(seq.patient_id, np.sqrt(seq.features), seq.offsets, seq.images, seq.label, paths=seq.paths)
    with pytest.raises(ConfigError, match="does not reproduce"):  # vectors another CNN made are refused
        sequence_film_cams(model, wrong, cnn)


def _read(path: str) -> np.ndarray:
    from cxrlab.io import read_image

    return read_image(path)[0]


def test_cli_finetuned_cv_report_shows_the_sequence_models_gradcam(phantom_lite0):
    emb, tmp = phantom_lite0
    path = tmp / "emb_cli.parquet"
    write_embeddings(path, emb.vectors, emb.meta, emb.info)
    out = tmp / "cv_ft"
    result = CliRunner().invoke(app, [
        "sequence", "cv", "cs230-survival", str(path), "--out", str(out), "--set", "features.finetune=true",
        "--set", "outcome.column=went_icu", "--set", "outcome.positive=null", "--set", "outcome.negative=null",
        "--set", "model.proj=16", "--set", "model.hidden=8", "--set", "train.epochs=2", "--set", "train.folds=2",
        "--set", "train.batch_size=8", "--n-boot", "20", "--timelines", "1"])
    assert result.exit_code == 0, result.output
    assert "fine-tuning the last 1 stage(s)" in result.output and "[6/6]" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["features"]["finetune"] is True
    html = (out / "report.html").read_text()
    assert "gradcam of the sequence model&#39;s output after each film" in html
    assert "through the fine-tuned film CNN" in html


def test_cross_validation_with_a_finetuned_cnn_keeps_folds_and_baselines(phantom_lite0):
    emb, _ = phantom_lite0
    cfg = SequenceConfig(features={"finetune": True}, outcome=ICU, model=SMALL,
                         train={"epochs": 1, "batch_size": 8, "folds": 2})
    seqs = build_sequences(emb, cfg)
    films = film_store_for(emb.info, 1)
    seen = []
    cv = cross_validate_sequences(seqs, cfg, n_boot=0, films=films, progress=lambda f, m: seen.append((f, m)))
    assert seen == [(f, m) for f in range(2) for m in ("lstm", "last", "mean")]
    assert {"pred_lstm", "pred_last", "pred_mean"} <= set(cv["predictions"].columns)
    assert len(cv["predictions"]) == len(seqs)
