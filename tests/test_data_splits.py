"""Patient-level splits: disjoint, complete, stratified, stable under a fixed seed, different across seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.data import schema
from cxrlab.data.splits import (assert_patient_disjoint, join_split, kfold_patients, load_split, patient_labels,
                                save_split,
                                split_patients)
from cxrlab.errors import ConfigError, InputError


@pytest.fixture()
def df(phantom_manifest) -> pd.DataFrame:
    return phantom_manifest.df.copy()


def _by_patient(df: pd.DataFrame, parts: pd.Series) -> dict[str, str]:
    return dict(zip(df[schema.PATIENT_ID], parts))


def test_split_is_patient_disjoint_complete_and_stratified(df):
    df["split"] = split_patients(df, seed=0, stratify=schema.FINDING)
    assert df["split"].notna().all() and set(df["split"]) == {"train", "val", "test"}
    assert (df.groupby(schema.PATIENT_ID)["split"].nunique() == 1).all()
    assert_patient_disjoint(df)
    per_part = df.groupby("split")[schema.PATIENT_ID].nunique()
    n = df[schema.PATIENT_ID].nunique()
    assert per_part["train"] == pytest.approx(0.7 * n, abs=4)
    # every diagnosis appears in every part (the fixture promises this to every test)
    classes = df.groupby("split")[schema.FINDING].agg(set)
    assert all(classes[p] == set(schema.FINDINGS) for p in ("train", "val", "test"))


def test_split_is_stable_under_seed_and_row_order_and_differs_across_seeds(df):
    a = _by_patient(df, split_patients(df, seed=7, stratify=schema.FINDING))
    shuffled = df.sample(frac=1.0, random_state=1)
    b = _by_patient(shuffled, split_patients(shuffled, seed=7, stratify=schema.FINDING))
    assert a == b
    c = _by_patient(df, split_patients(df, seed=8, stratify=schema.FINDING))
    assert a != c


def test_split_result_is_indexed_like_the_input(df):
    sub = df.iloc[::3]
    parts = split_patients(sub, ratios=(0.8, 0.2), seed=0)
    assert parts.index.equals(sub.index) and set(parts) == {"train", "test"} and parts.name == "split"


def test_patient_label_is_the_majority_value():
    toy = pd.DataFrame({schema.PATIENT_ID: ["a", "a", "a", "b"], "y": [1, 1, 0, 0]})
    assert patient_labels(toy, "y").to_dict() == {"a": "1", "b": "0"}


@pytest.mark.parametrize("ratios", [(0.5, 0.4), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1), (1.0,)])
def test_bad_ratios_are_config_errors(df, ratios):
    with pytest.raises(ConfigError, match="ratios"):
        split_patients(df, ratios=ratios)


def test_kfold_groups_patients_and_stratifies(df):
    folds = kfold_patients(df, k=4, seed=0, stratify=schema.FINDING)
    assert set(folds) == {0, 1, 2, 3} and folds.index.equals(df.index)
    assert (df.assign(fold=folds).groupby(schema.PATIENT_ID)["fold"].nunique() == 1).all()
    per_fold = df.assign(fold=folds).groupby("fold")[schema.FINDING].agg(set)
    assert all(v == set(schema.FINDINGS) for v in per_fold)
    assert _by_patient(df, folds) == _by_patient(df, kfold_patients(df, k=4, seed=0, stratify=schema.FINDING))
    assert _by_patient(df, folds) != _by_patient(df, kfold_patients(df, k=4, seed=1, stratify=schema.FINDING))


def test_kfold_without_stratify_uses_groups(df):
    folds = kfold_patients(df, k=5, seed=3)
    assert (df.assign(fold=folds).groupby(schema.PATIENT_ID)["fold"].nunique() == 1).all()
    sizes = df.assign(fold=folds).groupby("fold")[schema.PATIENT_ID].nunique()
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 2
    assert _by_patient(df, folds) != _by_patient(df, kfold_patients(df, k=5, seed=4))
    with pytest.raises(ConfigError):
        kfold_patients(df, k=1)


def test_leak_is_reported_with_the_patient(df):
    df["split"] = split_patients(df, seed=0)
    patient = df.groupby(schema.PATIENT_ID).size().idxmax()  # a patient with several images
    rows = df.index[df[schema.PATIENT_ID] == patient]
    df.loc[rows[0], "split"] = "train"
    df.loc[rows[1], "split"] = "test"
    with pytest.raises(InputError) as err:
        assert_patient_disjoint(df)
    assert patient in str(err.value) and "train" in str(err.value) and "test" in str(err.value)


def test_save_and_load_split_round_trip(df, tmp_path):
    df["split"] = split_patients(df, seed=0, stratify=schema.FINDING)
    path = save_split(df, tmp_path / "run" / "split.csv")
    assert list(pd.read_csv(path).columns) == ["image", "patient_id", "split"]
    assert [p.name for p in path.parent.iterdir()] == ["split.csv"]  # no temp file left behind
    loaded = load_split(path)
    assert (join_split(df, loaded) == df["split"]).all()
    with pytest.raises(InputError, match="no part"):
        join_split(pd.concat([df, df.assign(image="/elsewhere/x.png")]), loaded)


def test_load_split_refuses_a_leaking_or_broken_file(df, tmp_path):
    df["split"] = split_patients(df, seed=0)
    patient = df[schema.PATIENT_ID].value_counts().index[0]
    df.loc[df[schema.PATIENT_ID] == patient, "split"] = np.where(
        np.arange((df[schema.PATIENT_ID] == patient).sum()) == 0, "train", "test")
    leaking = tmp_path / "leak.csv"
    df[["image", "patient_id", "split"]].to_csv(leaking, index=False)
    with pytest.raises(InputError, match=patient):
        load_split(leaking)
    with pytest.raises(InputError, match="patient"):
        save_split(df, tmp_path / "split.csv")
    missing_col = tmp_path / "bad.csv"
    df[["image", "split"]].to_csv(missing_col, index=False)
    with pytest.raises(InputError, match="patient_id"):
        load_split(missing_col)
    with pytest.raises(InputError, match="does not exist"):
        load_split(tmp_path / "nope.csv")


def test_patients_sharing_a_film_become_one_split_unit():
    from cxrlab.data.splits import join_patients_by_film

    df = pd.DataFrame({schema.PATIENT_ID: ["a", "b", "b", "c", "d", "e"],
                       schema.IMAGE: [f"{i}.png" for i in range(6)]})
    # a and b share film x; b and c share film y (a chain); d's film is unique; e's could not be read
    units = join_patients_by_film(df, ["x", "x", "y", "y", "z", None])
    assert units.tolist() == ["a+b+c"] * 4 + ["d", "e"]
    df["cls"] = ["n", "n", "n", "n", "p", "p"]
    more = pd.DataFrame({schema.PATIENT_ID: [f"q{i}" for i in range(20)],
                         schema.IMAGE: [f"q{i}.png" for i in range(20)], "cls": ["n", "p"] * 10})
    table = pd.concat([df, more], ignore_index=True)
    joined = table.assign(**{schema.PATIENT_ID: join_patients_by_film(table, [*["x", "x", "y", "y", "z", None],
                                                                            *[f"u{i}" for i in range(20)]])})
    for seed in range(5):
        folds = kfold_patients(joined, k=4, seed=seed, stratify="cls")
        assert folds[:4].nunique() == 1  # a, b and c always share a fold
        parts = split_patients(joined, (0.5, 0.5), seed=seed)
        assert parts[:4].nunique() == 1
    with pytest.raises(ConfigError, match="digests"):
        join_patients_by_film(df, ["x"])
