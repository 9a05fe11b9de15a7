"""Patient-level splits: train/val/test by ratio, stratified group k-folds, and the leakage check.

Every image of a patient lands in the same part, always. Splits depend only on the set of patients, their
(patient-level) stratification label and the seed, never on row order, so they are reproducible.

>>> df["split"] = split_patients(df, seed=0, stratify="finding")
>>> assert_patient_disjoint(df)
>>> save_split(df, run_dir / "split.csv")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.utils import atomic_path

SPLIT = "split"
FOLD = "fold"
PART_NAMES = {2: ("train", "test"), 3: ("train", "val", "test")}
SPLIT_FILE_COLUMNS = [schema.IMAGE, schema.PATIENT_ID, SPLIT]


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(what, f"missing column(s): {', '.join(missing)}")


def _check_one_patient_per_image(df: pd.DataFrame, source: object) -> None:
    """An image listed under two patient ids would land in two parts: a leak no patient-level check sees."""
    if schema.IMAGE not in df.columns or df.empty:
        return
    pairs = pd.DataFrame({"i": df[schema.IMAGE].astype(str), "p": df[schema.PATIENT_ID].astype(str)})
    per_image = pairs.drop_duplicates().groupby("i")["p"].agg(sorted)
    shared = per_image[per_image.map(len) > 1]
    if len(shared):
        image, patients = next(iter(shared.items()))
        raise InputError(source, f"{len(shared)} image(s) listed under more than one patient, first: {image} "
                                 f"(patients {', '.join(patients)}); a patient-level split would put it in two parts",
                         field=schema.IMAGE)


def patient_labels(df: pd.DataFrame, column: str) -> pd.Series:
    """One label per patient (indexed by patient id, sorted): the patient's most frequent value of ``column``.

    Ties go to the smallest value, so the result does not depend on row order.
    """
    _require(df, [schema.PATIENT_ID, column], f"stratify={column!r}")
    pairs = pd.DataFrame({"p": df[schema.PATIENT_ID].astype(str).to_numpy(), "y": df[column].astype(str).to_numpy()})
    counts = pairs.groupby(["p", "y"]).size().reset_index(name="n")
    counts = counts.sort_values(["p", "n", "y"], ascending=[True, False, True])
    return counts.drop_duplicates("p").set_index("p")["y"].sort_index()


def _allocate(n: int, ratios: np.ndarray) -> np.ndarray:
    """Integer part sizes summing to ``n`` (largest remainder); each non-zero ratio gets a patient when n allows."""
    exact = ratios * n
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[i] += 1
    # small strata: give empty evaluation parts one patient taken from the largest part
    for i in np.flatnonzero((sizes == 0) & (ratios > 0)):
        donor = int(np.argmax(sizes))
        if sizes[donor] > 1:
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes


def split_patients(df: pd.DataFrame, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                   stratify: str | None = None) -> pd.Series:
    """Assign each row to 'train'/'val'/'test' (or 'train'/'test' for two ratios) by patient.

    With ``stratify`` (a column name), each part gets its share of every patient-level label (see
    :func:`patient_labels`). Returns a Series named ``split`` indexed like ``df``.
    """
    r = np.asarray(ratios, dtype=float)
    if r.size not in PART_NAMES or (r < 0).any() or not np.isclose(r.sum(), 1.0):
        raise ConfigError(f"split ratios must be 2 or 3 non-negative numbers summing to 1, got {tuple(ratios)}")
    _require(df, [schema.PATIENT_ID], "split_patients")
    _check_one_patient_per_image(df, "split_patients")
    names = PART_NAMES[r.size]
    if stratify is None:
        strata = pd.Series("all", index=sorted(df[schema.PATIENT_ID].astype(str).unique()))
    else:
        strata = patient_labels(df, stratify)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in sorted(strata.unique()):
        patients = np.array(sorted(strata.index[strata == label]))
        patients = patients[rng.permutation(len(patients))]
        bounds = np.cumsum(_allocate(len(patients), r))[:-1]
        for name, part in zip(names, np.split(patients, bounds)):
            assignment.update(dict.fromkeys(part.tolist(), name))
    return df[schema.PATIENT_ID].astype(str).map(assignment).rename(SPLIT)


def kfold_patients(df: pd.DataFrame, k: int = 5, seed: int = 0, stratify: str | None = None) -> pd.Series:
    """Fold number 0..k-1 per row, by patient: scikit-learn ``StratifiedGroupKFold`` (``GroupKFold`` if no
    ``stratify``), shuffled with ``seed``. Returns a Series named ``fold`` indexed like ``df``."""
    _require(df, [schema.PATIENT_ID], "kfold_patients")
    _check_one_patient_per_image(df, "kfold_patients")
    patients = df[schema.PATIENT_ID].astype(str)
    n_patients = patients.nunique()
    if not 2 <= k <= n_patients:
        raise ConfigError(f"k-fold: k must be between 2 and the number of patients ({n_patients}), got {k}")
    # fold on the sorted unique patients so the result does not depend on row order or images per patient
    order = np.array(sorted(patients.unique()))
    if stratify is None:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(order, groups=order)
    else:
        y = patient_labels(df, stratify).loc[order].to_numpy()
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(order, y, groups=order)
    fold_of: dict[str, int] = {}
    for fold, (_, test_idx) in enumerate(folds):
        fold_of.update(dict.fromkeys(order[test_idx].tolist(), fold))
    return patients.map(fold_of).astype(int).rename(FOLD)


def assert_patient_disjoint(df: pd.DataFrame, split_col: str = SPLIT, source: object = "split") -> None:
    """Raise ``InputError`` naming every patient found in more than one part of ``split_col``."""
    _require(df, [schema.PATIENT_ID, split_col], str(source))
    parts = df.groupby(df[schema.PATIENT_ID].astype(str))[split_col].agg(lambda s: sorted(set(s.astype(str))))
    leaked = parts[parts.map(len) > 1]
    if len(leaked):
        shown = "; ".join(f"{p} in {', '.join(v)}" for p, v in leaked.head(10).items())
        more = f" (and {len(leaked) - 10} more)" if len(leaked) > 10 else ""
        raise InputError(source, f"{len(leaked)} patient(s) appear in more than one part: {shown}{more}",
                         field=split_col)


def save_split(df: pd.DataFrame, path: str | os.PathLike, split_col: str = SPLIT) -> Path:
    """Write ``split.csv`` (``image, patient_id, split``) atomically, after checking patient disjointness."""
    path = Path(path)
    _require(df, [schema.IMAGE, schema.PATIENT_ID, split_col], str(path))
    assert_patient_disjoint(df, split_col, source=path)
    out = df[[schema.IMAGE, schema.PATIENT_ID, split_col]].rename(columns={split_col: SPLIT})
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return path


def load_split(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``split.csv``; checks its columns, that every image has a part, and patient disjointness."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "split file does not exist" if not path.exists() else "is a directory, not a split file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (no header row)")
    try:
        df = pd.read_csv(path, dtype={schema.PATIENT_ID: str, SPLIT: str})
    except Exception as exc:  # pandas raises many kinds; the user needs the file and the reason
        raise InputError(path, f"cannot read split file: {exc}") from exc
    _require(df, SPLIT_FILE_COLUMNS, str(path))
    empty = df[SPLIT].isna()
    if empty.any():
        raise InputError(path, f"{int(empty.sum())} row(s) without a part, first: {df.loc[empty, schema.IMAGE].iloc[0]}",
                         field=SPLIT)
    unknown = sorted(set(df[SPLIT]) - set(PART_NAMES[3]))
    if unknown:
        raise InputError(path, f"unknown part name(s) {', '.join(map(repr, unknown))} (expected train, val, test)",
                         field=SPLIT)
    parts = df.groupby(df[schema.IMAGE].astype(str))[SPLIT].nunique()
    if (parts > 1).any():
        raise InputError(path, f"{int((parts > 1).sum())} image(s) listed in more than one part, first: "
                               f"{parts[parts > 1].index[0]}", field=SPLIT)
    assert_patient_disjoint(df, SPLIT, source=path)
    return df


def join_split(df: pd.DataFrame, split: pd.DataFrame) -> pd.Series:
    """The part of each row of ``df`` taken from a loaded split table (matched on ``image``); checks coverage."""
    _require(df, [schema.IMAGE], "join_split")
    part = df[schema.IMAGE].astype(str).map(split.set_index(split[schema.IMAGE].astype(str))[SPLIT])
    if part.isna().any():
        raise InputError("split", f"{int(part.isna().sum())} image(s) have no part, first: "
                         f"{df.loc[part.isna(), schema.IMAGE].iloc[0]}", field=SPLIT)
    return part.rename(SPLIT)


def join_patients_by_film(df: pd.DataFrame, digests: Sequence[str | None]) -> pd.Series:
    """Split units: patients who share a film (the same pixels under two patient ids: a re-upload, a copy in two
    collections) are joined into one unit so that film cannot fall on both sides of a split. ``digests``: one
    pixel hash per row (``cxrlab.data.validate.pixel_digest``; None = unknown). Returns, per row, the unit id
    (the patient id itself, or the joined patients' ids sorted and joined by '+'), named ``patient_id`` so it
    can replace that column for :func:`split_patients` / :func:`kfold_patients`."""
    _require(df, [schema.PATIENT_ID], "join_patients_by_film")
    patients = df[schema.PATIENT_ID].astype(str).to_numpy()
    if len(digests) != len(patients):
        raise ConfigError(f"join_patients_by_film: {len(digests)} digests for {len(patients)} rows")
    parent = {p: p for p in patients}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    first_owner: dict[str, str] = {}
    for patient, digest in zip(patients, digests):
        if digest is None:
            continue
        owner = first_owner.setdefault(digest, patient)
        a, b = root(owner), root(patient)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for p in sorted(parent):
        members.setdefault(root(p), []).append(p)
    unit = {p: "+".join(group) for group in members.values() for p in group}
    return pd.Series([unit[p] for p in patients], index=df.index, name=schema.PATIENT_ID)


def film_digests(df: pd.DataFrame, on_item=None) -> list[str | None]:
    """The pixel hash of each row's image (None where it cannot be read: validation reports those)."""
    from cxrlab.data.validate import pixel_digest

    out: list[str | None] = []
    for i, image in enumerate(df[schema.IMAGE].astype(str)):
        try:
            out.append(pixel_digest(image))
        except InputError:
            out.append(None)
        if on_item is not None:
            on_item(i + 1, len(df))
    return out
