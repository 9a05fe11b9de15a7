"""The chest phantom: format, determinism, anatomy conventions, exact truth, and truth readable from pixels."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from cxrlab.data import schema
from cxrlab.data.manifest import load_manifest
from cxrlab.data.phantom import COLUMNS, MASK_CONSOLIDATION, generate_phantom, render_sample, truth_from_masks, zone_map
from cxrlab.errors import ConfigError
from cxrlab.io import read_image, read_mask

TRUTH = [c for c in COLUMNS if c.startswith(("involvement_", "opacity_", "zone_involvement_", "brixia_"))] + [
    schema.GEOGRAPHIC_EXTENT]


def _masks(row: pd.Series) -> dict[str, np.ndarray]:
    cols = [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG, schema.MASK_HEART, schema.MASK_DISEASE,
            schema.MASK_LUNGS, MASK_CONSOLIDATION]
    return {c: read_mask(row[c]) for c in cols}


def test_folder_is_a_cxrlab_manifest(phantom_root, phantom_manifest):
    raw = pd.read_csv(phantom_root / "manifest.csv")
    assert list(raw.columns) == COLUMNS
    assert set(schema.CORE_COLUMNS + schema.MASK_COLUMNS + schema.BRIXIA_COLUMNS) <= set(raw.columns)
    assert raw[schema.IMAGE].str.startswith("images/").all()  # relative on disk
    df = phantom_manifest.df
    assert set(df[schema.SOURCE_DATASET]) == {"phantom"}
    assert set(df[schema.VIEW]) <= {"PA", "AP"} and set(df[schema.SEX]) <= schema.SEXES
    assert set(df[schema.FINDING]) == set(schema.FINDINGS)
    assert df[schema.IMAGE].is_unique
    image, header = read_image(df[schema.IMAGE].iloc[0])
    assert image.shape == (128, 128) and header.bits_stored == 8
    for col in schema.MASK_COLUMNS:
        raw_mask = cv2.imread(df[col].iloc[1], cv2.IMREAD_UNCHANGED)  # on disk, masks are 0/255
        assert raw_mask.dtype == np.uint8 and set(np.unique(raw_mask)) <= {0, 255}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_phantom(tmp_path / "a", n_patients=4, size=64, seed=3)
    b = generate_phantom(tmp_path / "b", n_patients=4, size=64, seed=3)
    c = generate_phantom(tmp_path / "c", n_patients=4, size=64, seed=4)
    assert a.read_bytes() == b.read_bytes()
    images = sorted((tmp_path / "a" / "images").iterdir())
    assert all((tmp_path / "b" / "images" / p.name).read_bytes() == p.read_bytes() for p in images)
    first_c = sorted((tmp_path / "c" / "images").iterdir())[0]
    assert first_c.read_bytes() != images[0].read_bytes()
    assert pd.read_csv(a)[TRUTH].to_numpy().tolist() != pd.read_csv(c)[TRUTH].to_numpy().tolist() or \
        pd.read_csv(a)[schema.PATIENT_ID].tolist() != pd.read_csv(c)[schema.PATIENT_ID].tolist()


def test_parallel_generation_matches_serial(tmp_path):
    serial = generate_phantom(tmp_path / "s", n_patients=4, size=64, seed=1)
    parallel = generate_phantom(tmp_path / "p", n_patients=4, size=64, seed=1, n_jobs=2)
    assert serial.read_bytes() == parallel.read_bytes()


def test_anatomy_conventions(phantom_manifest):
    """Heart on the patient's left = image right; patient-right lung on the image left; masks nest."""
    for _, row in phantom_manifest.df.iloc[::4].iterrows():
        m = _masks(row)
        right, left, heart, disease = (m[schema.MASK_RIGHT_LUNG], m[schema.MASK_LEFT_LUNG], m[schema.MASK_HEART],
                                       m[schema.MASK_DISEASE])
        cols = np.arange(right.shape[1])
        centre = lambda mask: (mask.sum(axis=0) * cols).sum() / mask.sum()  # noqa: E731
        assert centre(right) < right.shape[1] / 2 < centre(left)
        assert centre(heart) > right.shape[1] / 2
        assert not (right & left).any() and not ((right | left) & heart).any()
        assert np.array_equal(m[schema.MASK_LUNGS], right | left)
        assert not (disease & (1 - (right | left))).any(), "disease drawn outside the lungs"
        assert not (m[MASK_CONSOLIDATION] & (1 - disease)).any()
        assert right.sum() > 0.05 * right.size and left.sum() > 0.04 * left.size


def test_manifest_truth_equals_truth_recomputed_from_masks(phantom_manifest):
    df = phantom_manifest.df
    for _, row in df.iterrows():
        m = _masks(row)
        truth = truth_from_masks(m[schema.MASK_RIGHT_LUNG], m[schema.MASK_LEFT_LUNG], m[schema.MASK_DISEASE],
                                 m[MASK_CONSOLIDATION])
        for key, value in truth.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (row[schema.IMAGE], key)
    assert (df[schema.BRIXIA_GLOBAL] == df[schema.BRIXIA_COLUMNS].sum(axis=1)).all()
    assert df[schema.BRIXIA_GLOBAL].between(0, 18).all() and df[schema.GEOGRAPHIC_EXTENT].between(0, 8).all()
    assert df[schema.OPACITY_SCORE].between(0, 6).all()


@pytest.mark.parametrize("fraction, grade, extent", [
    (0.0, 0, 0), (0.01, 1, 1), (1 / 3, 1, 2), (0.34, 2, 2), (0.5, 2, 3), (2 / 3, 2, 3), (0.67, 3, 3),
    (0.76, 3, 4), (1.0, 3, 4),
])
def test_grades_follow_their_definitions(fraction, grade, extent):
    """A square 'lung' with the top ``fraction`` of rows diseased: grades match the documented bands."""
    lung = np.zeros((300, 300), np.uint8)
    lung[:, :150] = 1
    disease = np.zeros_like(lung)
    disease[: int(round(fraction * 300)), :150] = 1
    truth = truth_from_masks(lung, np.zeros_like(lung), disease)
    assert truth["involvement_right"] == pytest.approx(fraction, abs=2e-3)
    assert truth[schema.OPACITY_RIGHT] == grade and truth[schema.OPACITY_LEFT] == 0
    assert truth[schema.GEOGRAPHIC_EXTENT] == extent
    # disease filling rows from the top fills zones A, then B, then C
    expected_a = min(1.0, fraction * 3)
    assert truth["zone_involvement_A"] == pytest.approx(expected_a, abs=1e-2)
    assert truth["brixia_D"] == 0


def test_zone_map_cuts_vertical_extent_in_equal_thirds():
    lung = np.zeros((40, 10), np.uint8)
    lung[10:40, 2:8] = 1
    zones = zone_map(lung)
    assert (zones[:10] == -1).all()
    assert [int((zones == z).any(axis=1).sum()) for z in range(3)] == [10, 10, 10]


def test_opacity_score_from_pattern():
    lung = np.zeros((100, 100), np.uint8)
    lung[:, :50] = 1
    ggo = np.zeros_like(lung)
    ggo[:40, :50] = 1
    assert truth_from_masks(lung, np.zeros_like(lung), ggo)[schema.OPACITY_SCORE] == 1
    cons = np.zeros_like(lung)
    cons[:20, :50] = 1
    assert truth_from_masks(lung, np.zeros_like(lung), ggo, cons)[schema.OPACITY_SCORE] == 2
    assert truth_from_masks(lung, np.zeros_like(lung), lung, lung)[schema.OPACITY_SCORE] == 3


def test_a_pixel_grader_reads_the_truth_back(phantom_manifest):
    """Opacity is visible: diseased lung pixels are brighter, and a naive intensity grader ranks lungs by
    involvement (more bright pixels => higher grade)."""
    estimates, truths, contrasts = [], [], []
    for _, row in phantom_manifest.df.iterrows():
        image, _ = read_image(row[schema.IMAGE])
        disease = read_mask(row[schema.MASK_DISEASE])
        for col, side in ((schema.MASK_RIGHT_LUNG, "right"), (schema.MASK_LEFT_LUNG, "left")):
            lung = read_mask(row[col]) > 0
            values, sick = image[lung], disease[lung] > 0
            estimates.append(np.mean(values > np.percentile(values, 10) + 0.12))  # brighter than aerated lung
            truths.append(row[f"opacity_{side}"])
            if sick.any() and (~sick).any():
                contrasts.append(values[sick].mean() - values[~sick].mean())
    assert np.mean(np.array(contrasts) > 0) > 0.95
    assert spearmanr(estimates, truths).statistic > 0.6
    by_grade = pd.Series(estimates).groupby(pd.Series(truths)).mean()
    assert by_grade.is_monotonic_increasing and len(by_grade) >= 3


def test_disease_distribution_depends_on_finding(phantom_manifest):
    df = phantom_manifest.df
    normal = df[df[schema.FINDING] == "normal"]
    assert (normal[["involvement_right", "involvement_left"]] == 0).all().all()
    sick = df[df[schema.FINDING] != "normal"]
    assert (sick[["involvement_right", "involvement_left"]].max(axis=1) > 0).all()
    bacterial = df[df[schema.FINDING] == "bacterial"]
    # focal: mostly one lung only
    one_sided = (bacterial[["involvement_right", "involvement_left"]] == 0).any(axis=1).mean()
    assert one_sided > 0.6
    for finding in ("viral", "covid19"):
        both = (df.loc[df[schema.FINDING] == finding, ["involvement_right", "involvement_left"]] > 0).all(axis=1)
        assert both.mean() > 0.9, finding
    z = {f: df[df[schema.FINDING] == f] for f in ("viral", "covid19")}
    lower = lambda d: (d["zone_involvement_C"] + d["zone_involvement_F"]).mean()  # noqa: E731
    upper = lambda d: (d["zone_involvement_A"] + d["zone_involvement_D"]).mean()  # noqa: E731
    assert lower(z["covid19"]) > 1.5 * upper(z["covid19"])  # lower-zone predominance
    assert lower(z["covid19"]) / max(upper(z["covid19"]), 1e-6) > lower(z["viral"]) / max(upper(z["viral"]), 1e-6)


def test_clinical_course(phantom_manifest):
    df = phantom_manifest.df
    per_patient = df.groupby(schema.PATIENT_ID)
    assert per_patient.size().between(1, 6).all() and per_patient.size().max() > 1
    for col in (schema.FINDING, schema.WENT_ICU, schema.SURVIVAL_DAYS, schema.DEATH_EVENT, schema.SEX, schema.AGE):
        assert (per_patient[col].nunique() == 1).all(), col
    assert (per_patient[schema.OFFSET_DAYS].min() == 0).all()
    assert per_patient[schema.OFFSET_DAYS].apply(lambda s: s.is_monotonic_increasing and s.is_unique).all()
    assert (df[schema.SURVIVAL_DAYS] >= df[schema.OFFSET_DAYS]).all()
    assert (df.loc[df[schema.FINDING] == "normal", schema.WENT_ICU] == 0).all()
    patients = per_patient.agg(icu=(schema.WENT_ICU, "first"), died=(schema.DEATH_EVENT, "first"),
                               peak=("involvement_right", "max"))
    assert patients.icu.sum() > 0 and patients.died.sum() > 0
    assert patients.loc[patients.icu == 1, "peak"].mean() > patients.loc[patients.icu == 0, "peak"].mean()


def test_severity_grows_with_the_course_variable():
    low = render_sample("covid19", severity=0.2, size=96, seed=5)
    high = render_sample("covid19", severity=0.9, size=96, seed=5)
    assert high["labels"]["involvement_right"] > low["labels"]["involvement_right"]
    assert high["labels"][schema.BRIXIA_GLOBAL] > low["labels"][schema.BRIXIA_GLOBAL]
    # the same patient seed keeps the anatomy: disease spreads from where it started
    assert (low["disease_mask"] & high["disease_mask"]).sum() > 0.5 * low["disease_mask"].sum()


@pytest.mark.parametrize("finding", schema.FINDINGS)
def test_render_sample_is_a_sample_dict(finding):
    s = render_sample(finding, severity=0.6, size=96, seed=2, marker="L")
    assert s["image"].dtype == np.float32 and s["image"].shape == (96, 96) and 0 <= s["image"].min() <= s["image"].max() <= 1
    for key in schema.MASK_KEYS:
        assert s[key].dtype == np.uint8 and s[key].shape == (96, 96) and set(np.unique(s[key])) <= {0, 1}
    truth = truth_from_masks(s["patient_right_mask"], s["patient_left_mask"], s["disease_mask"], s["consolidation_mask"])
    assert {k: s["labels"][k] for k in truth} == truth
    assert (s["disease_mask"].sum() == 0) == (finding == "normal")
    assert s["meta"]["source_dataset"] == "phantom"


@pytest.mark.parametrize("kwargs", [{"n_patients": 0}, {"size": 16}, {"max_studies": 7}])
def test_bad_arguments_are_config_errors(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        generate_phantom(tmp_path, **kwargs)


def test_render_sample_rejects_unknown_finding():
    with pytest.raises(ConfigError, match="finding"):
        render_sample("tuberculosis")
    with pytest.raises(ConfigError, match="severity"):
        render_sample("viral", severity=1.5)


def test_manifest_loads_from_a_moved_folder(tmp_path):
    generate_phantom(tmp_path / "orig", n_patients=2, size=64, seed=0)
    shutil.move(tmp_path / "orig", tmp_path / "moved")
    m = load_manifest(tmp_path / "moved")
    assert all(str(tmp_path / "moved") in p for p in m.df[schema.IMAGE])
    assert read_image(m.df[schema.IMAGE].iloc[0])[0].shape == (64, 64)
