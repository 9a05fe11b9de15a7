"""Sequence outcome models: packing (padded batch = unpadded sequences), last-real-step readout, prediction from a
prefix of the course, Cox loss and C-index on hand-made risks, and on phantom courses the LSTM beats the last
film."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.data.phantom import generate_phantom
from cxrlab.errors import InputError
from cxrlab.evaluate.survival import concordance_index, kaplan_meier
from cxrlab.models.sequence import LastFilmNet, MeanFeaturesNet, SequenceNet
from cxrlab.retrieval import Embeddings
from cxrlab.train.sequence import (PatientSequence, SequenceConfig, build_sequences, collate, cox_loss,
                                   cross_validate_sequences, fit_sequence_model, load_sequence_config,
                                   predict_sequences)

F = 6


def sequences(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [PatientSequence(f"P{i}", rng.normal(size=(n, F)).astype(np.float32),
                            np.cumsum(rng.integers(0, 5, n)).astype(float), [f"{i}_{j}.png" for j in range(n)],
                            label=float(i % 2)) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("net_cls", [SequenceNet, LastFilmNet, MeanFeaturesNet])
def test_padded_batch_equals_unpadded_sequences_and_reads_the_last_real_film(net_cls):
    torch.manual_seed(0)
    net = net_cls(F, hidden=8, proj=5).eval()
    seqs = sequences([3, 1, 5, 2])
    batch = collate(seqs)
    batch["features"][0, 3:] = 1e3  # garbage in the padding must not matter
    with torch.no_grad():
        together = net(batch["features"], batch["gaps"], batch["lengths"])
        alone = torch.cat([net(**{k: collate([s])[k] for k in ("features", "gaps", "lengths")}) for s in seqs])
        steps = net.per_step(batch["features"], batch["gaps"], batch["lengths"])
    assert torch.allclose(together, alone, atol=1e-5)
    for i, s in enumerate(seqs):
        n = len(s.offsets)
        assert torch.isclose(steps[i, n - 1], together[i], atol=1e-5)  # read at the last real film
        assert torch.isnan(steps[i, n:]).all()                          # never at padding


def test_prediction_from_a_prefix_uses_only_films_up_to_that_point():
    cfg = SequenceConfig(model={"hidden": 8, "proj": 5}, train={"epochs": 2, "batch_size": 4})
    seqs = sequences([4, 5, 3, 6], seed=1)
    model = fit_sequence_model(seqs, cfg)
    steps = predict_sequences(model, seqs, cfg, per_step=True)
    for s, st in zip(seqs, steps):
        for t in range(1, len(s.offsets) + 1):
            assert predict_sequences(model, [s.prefix(t)], cfg)[0] == pytest.approx(st[t - 1], abs=1e-5)
    changed = [PatientSequence(s.patient_id, s.features.copy(), s.offsets, s.images, s.label) for s in seqs]
    changed[1].features[3:] = np.random.default_rng(9).normal(size=(2, F))  # films after the third change...
    after = predict_sequences(model, changed, cfg, per_step=True)
    assert np.allclose(after[1][:3], steps[1][:3], atol=1e-6)  # ...nothing known at the third
    assert not np.allclose(after[1][3:], steps[1][3:])


def test_c_index_and_cox_loss_on_hand_made_risks():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1])
    assert concordance_index(time, event, [4, 3, 2, 1]) == 1.0     # earlier death, higher risk
    assert concordance_index(time, event, [1, 2, 3, 4]) == 0.0
    # comparable pairs: (1,2) (1,3) (1,4) (2,3) (2,4); the censored 3 only as the longer one; ties count 1/2
    assert concordance_index(time, event, [2, 1, 1, 0]) == pytest.approx((1 + 1 + 1 + 0.5 + 1) / 5)
    assert np.isnan(concordance_index(time, [0, 0, 0, 0], [1, 2, 3, 4]))
    t, s = kaplan_meier(time, event)
    assert np.allclose(s, [0.75, 0.5, 0.5, 0.0])
    # the Cox loss by hand (no ties): -mean over events of r_i - log sum_{t_j >= t_i} exp r_j
    r = torch.tensor([0.5, -0.2, 0.1, 0.3])
    want = -np.mean([0.5 - np.log(np.exp([0.5, -0.2, 0.1, 0.3]).sum()),
                     -0.2 - np.log(np.exp([-0.2, 0.1, 0.3]).sum()), 0.3 - np.log(np.exp(0.3))])
    got = cox_loss(r, torch.tensor(time, dtype=torch.float32), torch.tensor(event, dtype=torch.float32))
    assert float(got) == pytest.approx(want, abs=1e-6)
    tied = cox_loss(r, torch.tensor([2.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    both = np.log(np.exp([0.5, -0.2, 0.1, 0.3]).sum())  # Breslow: tied events share the full risk set
    assert float(tied) == pytest.approx(-np.mean([0.5 - both, -0.2 - both, 0.3 - 0.3]), abs=1e-6)


def test_build_sequences_groups_orders_and_refuses_missing_outcomes():
    meta = pd.DataFrame({"image": ["b2", "a1", "b1", "a2", "c1"], "patient_id": ["B", "A", "B", "A", "C"],
                         "offset_days": [5.0, 0.0, 1.0, 3.0, np.nan], "survival": ["N", "Y", "N", "Y", "Y"]})
    unknown = Embeddings(np.zeros((2, 2), np.float32), pd.DataFrame({"image": ["d1", "e1"], "patient_id": ["D", "E"],
                                                                      "offset_days": [0, 0], "survival": ["?", "Y"]}))
    emb = Embeddings(np.arange(10, dtype=np.float32).reshape(5, 2), meta)
    cfg = load_sequence_config("cs230-survival")
    seqs = build_sequences(emb, cfg)
    assert [s.patient_id for s in seqs] == ["A", "B"]  # C has no dated film
    assert seqs[1].images == ["b1", "b2"] and seqs[1].label == 1.0 and seqs[0].label == 0.0
    assert np.array_equal(seqs[1].features, [[4, 5], [0, 1]])
    assert [s.patient_id for s in build_sequences(unknown, cfg)] == ["E"]  # '?' is not a survivor
    with pytest.raises(InputError, match="survival_days"):
        build_sequences(emb, SequenceConfig(outcome={"kind": "survival"}))


def phantom_sequences(tmp_path):
    """Phantom courses with each film's recorded lung involvement (plus noise) as its 'features'."""
    root = generate_phantom(tmp_path / "ph", n_patients=400, size=32, seed=5, max_studies=6).parent
    df = pd.read_csv(root / "manifest.csv")
    rng = np.random.default_rng(0)
    x = df[["involvement_right", "involvement_left"]].to_numpy(np.float32)
    x = np.concatenate([x, x.mean(1, keepdims=True)], 1) + rng.normal(0, 0.03, (len(df), 3)).astype(np.float32)
    return Embeddings(x, df)


def test_on_phantom_courses_the_sequence_model_beats_the_last_film(tmp_path):
    emb = phantom_sequences(tmp_path)
    cfg = SequenceConfig(outcome={"kind": "binary", "column": "went_icu"}, model={"hidden": 16, "proj": 16,
                         "dropout": 0.0}, train={"epochs": 40, "lr": 0.01, "batch_size": 32, "folds": 3})
    # ICU follows the course's *peak* severity; with four or more films the last one is often past the peak
    seqs = [s for s in build_sequences(emb, cfg) if len(s.offsets) >= 4]
    cv = cross_validate_sequences(seqs, cfg, modes=["lstm", "last"], n_boot=200)
    est = cv["estimates"]
    assert est["lstm"]["value"] > est["last"]["value"] + 0.03, est
    assert est["lstm"]["value"] > 0.75
    assert len(cv["predictions"]) == len(seqs) and set(cv["predictions"]["fold"]) == {0, 1, 2}
    # the time-to-event head on the same courses: the Cox LSTM ranks deaths above chance
    surv = SequenceConfig(outcome={"kind": "survival"}, model={"hidden": 16, "proj": 16, "dropout": 0.0},
                          train={"epochs": 30, "batch_size": 32, "folds": 3})
    cv = cross_validate_sequences(build_sequences(emb, surv), surv, modes=["lstm"], n_boot=0)
    assert cv["metric"] == "c_index" and cv["estimates"]["lstm"]["value"] > 0.7


def test_cli_sequence_cv_writes_metrics_and_out_of_fold_predictions(tmp_path):
    import json

    from typer.testing import CliRunner

    from cxrlab.cli.main import app
    from cxrlab.retrieval import write_embeddings

    rng = np.random.default_rng(0)
    rows = []
    for p in range(30):
        died = p % 3 == 0
        for j in range(1 + p % 3):
            rows.append({"image": f"{p}_{j}.png", "image_path": f"/x/{p}_{j}.png", "patient_id": f"P{p:02d}",
                         "offset_days": 2 * j, "survival": "N" if died else "Y"})
    meta = pd.DataFrame(rows)
    x = rng.normal(size=(len(meta), 4)) + (meta["survival"] == "N").to_numpy()[:, None] * 2.0
    emb = write_embeddings(tmp_path / "emb.parquet", x, meta)
    result = CliRunner().invoke(app, ["sequence", "cv", "cs230-survival", str(emb), "--out", str(tmp_path / "cv"),
                                      "--set", "train.epochs=15", "--set", "train.folds=3", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert metrics["n_patients"] == 30 and metrics["n_positive"] == 10 and metrics["metric"] == "auc"
    assert metrics["estimates"]["lstm"]["value"] > 0.8  # a separable signal is found
    oof = pd.read_csv(tmp_path / "cv" / "predictions.csv")
    assert {"pred_lstm", "pred_last", "pred_mean", "fold"} <= set(oof.columns) and len(oof) == 30
    bad = CliRunner().invoke(app, ["sequence", "cv", "phantom-diagnosis", str(emb), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "not 'sequence'" in str(bad.exception or bad.output)


def test_risk_groups_and_figures():
    from cxrlab.evaluate.survival import km_figure, risk_groups, timeline_figure

    assert risk_groups([0.1, 0.9, 0.5, 0.2]).tolist() == [0, 1, 1, 0]
    png = km_figure([1, 2, 3, 4, 5, 6], [1, 0, 1, 1, 0, 1], [3, 1, 2, 5, 0, 4])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    png = timeline_figure([np.zeros((8, 8))] * 2, [0, 3], [0.2, 0.7], "P1")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_dependent_auc_separates_early_deaths():
    from cxrlab.evaluate.survival import time_dependent_auc

    time = np.array([2, 3, 5, 8, 10, 12, 15, 20, 25, 30], float)
    event = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0, 0])
    perfect = time_dependent_auc(time, event, -time, times=[6, 14])   # risk falls with time to event
    reversed_ = time_dependent_auc(time, event, time, times=[6, 14])
    assert np.allclose(perfect, 1.0) and np.allclose(reversed_, 0.0)
