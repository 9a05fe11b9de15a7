"""FLANNEL ensemble building blocks: the neural weight module, focal loss, combiners and out-of-fold assembly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxrlab.data.splits import kfold_patients
from cxrlab.ensemble import (FocalLoss, FoldPredictions, LeakageError, NeuralWeightModule, assemble_oof,
                             create_combiner, cross_validate_combiner, fold_predictions_from_table, list_combiners)
from cxrlab.errors import ConfigError, InputError

CLASSES = ["covid19", "viral", "bacterial", "normal"]


def _two_learners(n: int, rng: np.random.Generator, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, C) probabilities: learner 0 is noise (Dirichlet, ~chance), learner 1 informative (~80 % right)."""
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), y] += 2.0
    good = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    noise = rng.dirichlet(np.ones(n_classes), n)
    return np.stack([noise, good], axis=1), y


# --- the neural weight module --------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["tanh", "softmax"])
def test_weight_module_shapes_and_formula(activation):
    torch.manual_seed(0)
    module = NeuralWeightModule(n_learners=5, n_classes=4, activation=activation)
    assert module.linear.in_features == (5 * 4) ** 2 and module.linear.out_features == 5
    probs = torch.softmax(torch.randn(3, 5, 4), dim=2).requires_grad_(True)
    w = module.learner_weights(probs)
    logits = module(probs)
    assert w.shape == (3, 5) and logits.shape == (3, 4)
    if activation == "tanh":
        assert (w.abs() <= 1).all()
    else:
        torch.testing.assert_close(w.sum(dim=1), torch.ones(3))
    # Softmax(Σ_i W_i P_i), W_i the i-th column of W
    expected = sum(w[:, i:i + 1] * probs[:, i] for i in range(5))
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(module.predict_proba(probs), torch.softmax(expected, dim=1))
    logits.sum().backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all()
    with pytest.raises(ConfigError, match=r"\(B, 5, 4\)"):
        module(torch.rand(3, 4, 4))
    with pytest.raises(ConfigError, match="unknown weight activation"):
        NeuralWeightModule(2, 4, activation="relu")


@pytest.mark.parametrize("name", ["neural_tanh", "neural_softmax"])
def test_weight_module_learns_to_trust_the_better_learner(name):
    rng = np.random.default_rng(0)
    train_probs, train_y = _two_learners(600, rng)
    test_probs, test_y = _two_learners(600, rng)
    combiner = create_combiner(name, epochs=30, batch_size=200, seed=0).fit(train_probs, train_y)
    w = combiner.learner_weights(test_probs).mean(axis=0)
    assert w[1] > w[0] + 0.5, f"weights {w} do not favour the informative learner"
    acc = (combiner.predict_label(test_probs) == test_y).mean()
    noise_acc = (test_probs[:, 0].argmax(axis=1) == test_y).mean()
    good_acc = (test_probs[:, 1].argmax(axis=1) == test_y).mean()
    assert acc > noise_acc + 0.3 and acc >= good_acc - 0.03
    assert combiner.losses_[-1] < combiner.losses_[0]
    np.testing.assert_allclose(combiner.predict(test_probs).sum(axis=1), 1, rtol=1e-5)
    again = create_combiner(name, epochs=30, batch_size=200, seed=0).fit(train_probs, train_y)
    np.testing.assert_array_equal(again.predict(test_probs), combiner.predict(test_probs))  # seeded


# --- focal loss ----------------------------------------------------------------------------------------------
def test_focal_loss_is_cross_entropy_at_gamma_0_alpha_1():
    torch.manual_seed(0)
    logits, target = torch.randn(32, 4), torch.randint(0, 4, (32,))
    ce = F.cross_entropy(logits, target)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), ce)
    torch.testing.assert_close(FocalLoss(gamma=0.0, alpha=[1, 1, 1, 1])(logits, target), ce)


def test_focal_loss_down_weights_easy_examples():
    target = torch.tensor([0, 0])
    logits = torch.tensor([[6.0, 0, 0, 0], [0.2, 0, 0, 0]])      # an easy (p≈0.99) and a hard (p≈0.29) example
    ce = F.cross_entropy(logits, target, reduction="none")
    per = torch.stack([FocalLoss(gamma=2.0)(logits[i:i + 1], target[i:i + 1]) for i in range(2)])
    ratio = per / ce
    assert (per < ce).all()
    assert ratio[0] < 0.001 and ratio[1] > 0.4                     # (1 - p)^γ: the easy one nearly vanishes
    # larger γ, stronger down-weighting of the easy example
    assert FocalLoss(gamma=5.0)(logits[:1], target[:1]) < per[0]


def test_focal_alpha_is_inverse_class_frequency_by_default():
    y = np.array([0, 0, 0, 1, 2, 2])                               # counts 3, 1, 2 (class 3 absent)
    loss = FocalLoss.inverse_frequency(y, n_classes=4, gamma=0.0)
    np.testing.assert_allclose(loss.alpha.numpy(), [6 / 9, 6 / 3, 6 / 6, 0.0])
    logits, target = torch.randn(6, 4), torch.as_tensor(y)
    expected = (F.cross_entropy(logits, target, reduction="none") * loss.alpha[target]).mean()
    torch.testing.assert_close(loss(logits, target), expected)
    with pytest.raises(ConfigError):
        FocalLoss(gamma=-1)


# --- combiners -----------------------------------------------------------------------------------------------
def test_combiner_registry_and_simple_combiners():
    assert {"neural_tanh", "neural_softmax", "mean", "vote", "stacking"} <= set(list_combiners())
    with pytest.raises(ConfigError, match="unknown combiner"):
        create_combiner("median")
    with pytest.raises(ConfigError, match="unknown option"):
        create_combiner("neural_tanh", gama=2)
    # three learners, two images, three classes
    probs = np.array([[[.7, .2, .1], [.6, .3, .1], [.1, .1, .8]],
                      [[.4, .5, .1], [.1, .2, .7], [.5, .1, .4]]])
    y = np.array([0, 2])
    mean = create_combiner("mean").fit(probs, y)
    np.testing.assert_allclose(mean.predict(probs), probs.mean(axis=1))
    assert mean.predict_label(probs).tolist() == [0, 2]
    vote = create_combiner("vote").fit(probs, y)
    np.testing.assert_allclose(vote.predict(probs), [[2 / 3, 0, 1 / 3], [1 / 3, 1 / 3, 1 / 3]])
    # image 2: a three-way tie; class 2 has the highest mean probability (0.4)
    assert vote.predict_label(probs).tolist() == [0, 2]
    with pytest.raises(ConfigError, match="fitted on 3 learners"):
        mean.predict(probs[:, :2])
    with pytest.raises(ConfigError, match="before predict"):
        create_combiner("mean").predict(probs)
    with pytest.raises(ConfigError, match="labels"):
        create_combiner("mean").fit(probs, np.array([0, 3]))


def test_stacking_is_logistic_regression_and_keeps_absent_classes():
    rng = np.random.default_rng(1)
    probs, y = _two_learners(400, rng)
    stack = create_combiner("stacking").fit(probs, y)
    assert type(stack.model).__name__ == "LogisticRegression"
    assert (stack.predict_label(probs) == y).mean() > 0.7
    seen = y != 3                                                 # train without class 3: it gets probability 0
    out = create_combiner("stacking").fit(probs[seen], y[seen]).predict(probs)
    assert out.shape == (400, 4) and (out[:, 3] == 0).all()
    np.testing.assert_allclose(out.sum(axis=1), 1)


# --- out-of-fold assembly ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assignment(phantom_manifest) -> pd.DataFrame:
    df = phantom_manifest.df[["image", "patient_id", "finding"]].copy()
    df["fold"] = kfold_patients(df, k=5, seed=0, stratify="finding")
    return df


def _fold_predictions(assignment: pd.DataFrame, learner: str, seed: int) -> list[FoldPredictions]:
    """Honest per-fold predictions: the model of fold k predicts exactly fold k; the fold is written into the
    probabilities (mass on class fold % 4) so the test can see which model produced each one."""
    rng = np.random.default_rng(seed)
    out = []
    for fold, part in assignment.groupby("fold"):
        probs = rng.dirichlet(np.ones(4), len(part)) * 0.5
        probs[:, fold % 4] += 0.5
        out.append(FoldPredictions(learner, int(fold), part["image"].tolist(), probs))
    return out


def test_oof_assembly_on_the_phantom_uses_only_held_out_models(assignment):
    preds = _fold_predictions(assignment, "global", 0) + _fold_predictions(assignment, "patch", 1)
    oof = assemble_oof(assignment, preds)
    assert oof.probs.shape == (len(assignment), 2, 4) and oof.learners == ["global", "patch"]
    assert oof.images.tolist() == assignment["image"].tolist()
    # every probability came from the model of the patient's own (held-out) fold
    assert (oof.probs.argmax(axis=2) == (oof.folds % 4)[:, None]).all()
    for fold in np.unique(oof.folds):                            # and each patient sits in one fold only
        assert not set(oof.patients[oof.folds == fold]) & set(oof.patients[oof.folds != fold])
    # the long-table form gives the same result
    table = pd.concat([pd.DataFrame({"learner": p.learner, "fold": p.fold, "image": p.images,
                                     **{f"prob_{c}": p.probs[:, i] for i, c in enumerate(CLASSES)}})
                       for p in preds])
    again = assemble_oof(assignment, fold_predictions_from_table(table, CLASSES))
    np.testing.assert_array_equal(again.probs, oof.probs)
    labels = assignment["finding"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    cv = cross_validate_combiner("mean", oof, labels)
    np.testing.assert_allclose(cv, oof.probs.mean(axis=1))


def test_oof_assembly_refuses_a_probability_from_a_model_that_trained_on_the_patient(assignment):
    preds = _fold_predictions(assignment, "global", 0)
    # the model of fold 0 also "predicts" one image of fold 1, whose patients it trained on
    leaked_image = assignment.loc[assignment["fold"] == 1, "image"].iloc[0]
    leaked_patient = assignment.loc[assignment["image"] == leaked_image, "patient_id"].iloc[0]
    fold0 = preds[0]
    preds[0] = FoldPredictions("global", 0, [*fold0.images, leaked_image],
                               np.vstack([fold0.probs, [[0.25] * 4]]))
    preds[1] = FoldPredictions("global", 1, [i for i in preds[1].images if i != leaked_image],
                               preds[1].probs[[i != leaked_image for i in preds[1].images]])
    with pytest.raises(LeakageError, match=f"patient {leaked_patient}"):
        assemble_oof(assignment, preds)


def test_oof_assembly_honours_explicit_training_folds(assignment):
    preds = _fold_predictions(assignment, "global", 0)
    # a model of fold 0 that (also) trained on fold 0 is refused outright
    bad = [FoldPredictions(p.learner, p.fold, p.images, p.probs, train_folds=frozenset({0, 1, 2}))
           if p.fold == 0 else p for p in preds]
    with pytest.raises(LeakageError, match="include the fold it is said to be held out from"):
        assemble_oof(assignment, bad)
    # fold 0's model trained on folds 1-3 only (fold 4 was its validation fold): fine
    ok = [FoldPredictions(p.learner, p.fold, p.images, p.probs, train_folds=frozenset({1, 2, 3}))
          if p.fold == 0 else p for p in preds]
    assert assemble_oof(assignment, ok).probs.shape == (len(assignment), 1, 4)


def test_oof_assembly_refuses_gaps_duplicates_and_strangers(assignment):
    preds = _fold_predictions(assignment, "global", 0)
    with pytest.raises(InputError, match="without an out-of-fold probability"):
        assemble_oof(assignment, preds[1:])
    with pytest.raises(InputError, match="more than one"):
        assemble_oof(assignment, preds + [preds[2]])
    stranger = FoldPredictions("global", 0, ["not-in-the-split.png"], np.array([[0.25] * 4]))
    with pytest.raises(InputError, match="not in the fold assignment"):
        assemble_oof(assignment, preds + [stranger])
    not_probs = FoldPredictions("global", 0, preds[0].images, preds[0].probs * 2)
    with pytest.raises(InputError, match="summing to 1"):
        assemble_oof(assignment, [not_probs, *preds[1:]])
    split_patient = assignment.copy()
    split_patient.loc[split_patient.index[0], "patient_id"] = split_patient["patient_id"].iloc[-1]
    split_patient.loc[split_patient.index[0], "fold"] = (split_patient["fold"].iloc[-1] + 1) % 5
    with pytest.raises(InputError, match="more than one part"):
        assemble_oof(split_patient, preds)
