"""Every importer on a fixture in its native layout, written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlab.data.importers import import_dataset, list_importers, register_importer
from cxrlab.data.validate import errors, validate_manifest
from cxrlab.errors import ConfigError, InputError
from cxrlab.io import image_size, read_image, read_mask, write_png

rng = np.random.default_rng(0)


def img(path: Path, shape=(64, 64), rgb: bool = False) -> Path:
    arr = (rng.random(shape) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([arr] * 3, -1) if rgb else arr).save(path)
    return path


def lung(path: Path, shape=(64, 64), x0: int = 8, x1: int = 28) -> Path:
    m = np.zeros(shape, np.uint8)
    m[10:50, x0:x1] = 1
    return write_png(path, m, mask=True)


def test_registry_lists_every_format_and_rejects_unknown():
    assert {"cxrlab", "ieee8023", "kermany", "covid_radiography", "jsrt_scr", "montgomery", "shenzhen",
            "ny_sbu", "ricord", "folder", "csv"} <= set(list_importers())
    with pytest.raises(ConfigError, match="unknown importer 'nope'"):
        import_dataset("nope", ".")
    with pytest.raises(ConfigError, match="importer 'kermany' has no option colour; options: person_includes_type"):
        import_dataset("kermany", ".", colour="red")
    with pytest.raises(ConfigError, match="expected true/false"):
        import_dataset("kermany", ".", person_includes_type="maybe")
    with pytest.raises(ValueError, match="already registered"):
        register_importer("kermany")(lambda src, **kw: None)


def test_cxrlab_folder_maps_native_columns(tmp_path):
    for name in ("a", "b", "c"):
        img(tmp_path / "images" / f"{name}.png")
        lung(tmp_path / "masks" / "v7_right_lung" / f"{name}.png")
        lung(tmp_path / "masks" / "infection" / f"{name}.png", x0=30, x1=40)
    pd.DataFrame({
        "image": ["images/a.png", "images/b.png", "images/c.png"],
        "patient_id": ["p1", "p1", "p2"], "source_dataset": "x",
        "finding": ["COVID-19", "SARS", "No Finding"], "finding_coarse": ["covid19", "viral_other", "normal"],
        "view": ["PA", "?", "AP Supine"], "sex": ["M", "M", "F"], "age": [50, 50, 30],
        "went_icu": ["Y", "N", "Would have been stated"], "survival": ["N", "Y", None],
        "cohen_geographic_extent_mean": [4.3, None, None], "cohen_opacity_mean": [2.0, None, None],
        "brixia_senior_A": [3, None, None], "brixia_senior_global": [12, None, None],
        "mask_v7_right_lung": ["masks/v7_right_lung/a.png", "masks/v7_right_lung/b.png", ""],
        "mask_infection": ["masks/infection/a.png", "", "masks/infection/c.png"],
        "license": "CC BY",
    }).to_csv(tmp_path / "manifest.csv", index=False)
    m = import_dataset("cxrlab", tmp_path)
    df = m.df
    assert df["finding"].tolist() == ["covid19", "viral", "normal"]
    assert df["finding_detail"].tolist() == ["COVID-19", "SARS", "No Finding"]
    assert df["view"].tolist() == ["PA", "unknown", "AP Supine"] and df["view_raw"].iloc[1] == "?"
    assert df["went_icu"].tolist()[:2] == [1.0, 0.0] and np.isnan(df["went_icu"].iloc[2])
    assert df["death_event"].tolist()[:2] == [1.0, 0.0]
    assert df["geographic_extent"].iloc[0] == 4.3 and df["opacity_score"].iloc[0] == 2.0
    assert df["brixia_A"].iloc[0] == 3 and df["brixia_senior_A"].iloc[0] == 3 and df["brixia_global"].iloc[0] == 12
    assert Path(df["mask_right_lung"].iloc[0]).is_file() and pd.isna(df["mask_right_lung"].iloc[2])
    assert Path(df["mask_disease"].iloc[2]).is_file() and "mask_infection" not in df
    assert df["license"].tolist() == ["CC BY"] * 3  # extras kept
    assert errors(validate_manifest(m)) == []


def test_cxrlab_folder_blanks_contradictory_sex_with_a_note(tmp_path):
    img(tmp_path / "a.png"), img(tmp_path / "b.png")
    pd.DataFrame({"image": ["a.png", "b.png"], "patient_id": ["p", "p"], "source_dataset": "x",
                  "sex": ["M", "F"]}).to_csv(tmp_path / "manifest.csv", index=False)
    m = import_dataset("cxrlab", tmp_path)
    assert m.df["sex"].isna().all() and m.df["sex_raw"].tolist() == ["M", "F"]
    assert "contradictory sex" in m.attrs["notes"][0]


def test_ieee8023_upstream_with_cohen_and_brixia(tmp_path):
    for name in ("a.jpeg", "b.jpg", "c.png"):
        img(tmp_path / "images" / name, rgb=True)
    pd.DataFrame({
        "patientid": [1, 1, 2, 3], "offset": [0, 4, None, 2], "sex": ["M", "M", "F", "F"], "age": [60, 60, 40, 70],
        "finding": ["Pneumonia/Viral/COVID-19", "Pneumonia/Viral/COVID-19", "Pneumonia/Bacterial/Streptococcus",
                    "todo"],
        "went_icu": ["Y", "Y", "N", None], "survival": ["Y", "N", None, None],
        "view": ["PA", "AP Supine", "L", "Axial"], "modality": ["X-ray", "X-ray", "X-ray", "CT"],
        "folder": ["images", "images", "images", "volumes"], "filename": ["a.jpeg", "b.jpg", "c.png", "d.nii.gz"],
        "url": "http://x", "Unnamed: 29": None,
    }).to_csv(tmp_path / "metadata.csv", index=False)
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "covid-severity-scores.csv").write_text(
        "## COVID-19 Pneumonia Severity Scores,,\n## License: CC BY-SA,,\nfilename,geographic_mean,opacity_mean\n"
        "a.jpeg,6.0,4.0\n")
    (ann / "public-annotations.csv").write_text(
        "\ufefffilename,S-A,S-B,S-C,S-D,S-E,S-F,S-Global,J-A,J-B,J-C,J-D,J-E,J-F,J-Global\n"
        "b.jpg,1,2,3,0,1,2,9,1,1,1,1,1,1,6\n", encoding="utf-8")
    m = import_dataset("ieee8023", tmp_path)
    df = m.df.set_index("original_filename")
    assert len(df) == 3 and "skipped 1 rows" in m.attrs["notes"][0]
    assert df.loc["a.jpeg", "patient_id"] == "ieee8023_1" and df.loc["b.jpg", "offset_days"] == 4
    assert df["finding"].tolist() == ["covid19", "covid19", "bacterial"]
    assert df.loc["a.jpeg", "geographic_extent"] == 6.0 and np.isnan(df.loc["b.jpg", "geographic_extent"])
    assert df.loc["b.jpg", "brixia_C"] == 3 and df.loc["b.jpg", "brixia_global"] == 9
    assert df.loc["b.jpg", "brixia_junior_global"] == 6
    assert df.loc["b.jpg", "death_event"] == 1.0 and df.loc["a.jpeg", "went_icu"] == 1.0
    assert df["view"].tolist() == ["PA", "AP Supine", "L"]
    assert errors(validate_manifest(m)) == []


def test_kermany_layout(tmp_path):
    names = {"train/NORMAL": ["IM-0115-0001.jpeg", "NORMAL2-IM-0135-0001.jpeg"],
             "train/PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg", "person22_bacteria_77.jpeg"],
             "test/NORMAL": ["IM-0001-0001.jpeg"]}
    for folder, files in names.items():
        for name in files:
            img(tmp_path / "chest_xray" / folder / name)
    m = import_dataset("kermany", tmp_path)
    df = m.df.set_index("original_filename")
    assert len(df) == 6
    assert df.loc["person1_bacteria_1.jpeg", "finding"] == "bacterial"
    assert df.loc["person1_virus_6.jpeg", "finding"] == "viral"
    assert df.loc["person1_virus_6.jpeg", "patient_id"] == df.loc["person1_bacteria_1.jpeg", "patient_id"] \
        == "kermany_person1"
    assert df.loc["NORMAL2-IM-0135-0001.jpeg", "patient_id"] == "kermany_NORMAL2-IM-0135"
    assert df.loc["IM-0001-0001.jpeg", "original_split"] == "test"
    separate = import_dataset("kermany", tmp_path, person_includes_type="true").df
    assert separate["patient_id"].nunique() == 6
    assert errors(validate_manifest(m)) == []


def test_covid_radiography_resizes_masks_into_out(tmp_path):
    src, out = tmp_path / "COVID-19_Radiography_Dataset", tmp_path / "out"
    for klass in ("COVID", "Normal", "Viral Pneumonia", "Lung_Opacity"):
        img(src / klass / "images" / f"{klass}-1.png", shape=(75, 75))
        lung(src / klass / "masks" / f"{klass}-1.png", shape=(64, 64))
    raw = import_dataset("covid_radiography", src)
    assert any("mask size 64x64 differs" in i.reason for i in validate_manifest(raw))
    m = import_dataset("covid_radiography", src, out=out)
    assert sorted(m.df["finding"]) == ["covid19", "lung_opacity", "normal", "viral"]
    for image, mask in zip(m.df["image"], m.df["mask_lungs"]):
        assert Path(mask).is_relative_to(out) and image_size(mask) == image_size(image) == (75, 75)
    assert errors(validate_manifest(m)) == []


def test_jsrt_raw_images_and_scr_gif_masks(tmp_path):
    src, out = tmp_path / "jsrt", tmp_path / "out"
    (src / "images").mkdir(parents=True)
    raw = np.full((2048, 2048), 1000, dtype=">u2")
    raw[:, :1024] = 3000  # left half more attenuating in the raw convention -> darker after inversion
    raw.tofile(src / "images" / "JPCLN001.IMG")
    img(src / "images" / "JPCNN002.png", shape=(128, 128))
    for structure in ("left lung", "right lung", "heart"):
        for case, size in (("JPCLN001", 1024), ("JPCNN002", 128)):
            mask = np.zeros((size, size), np.uint8)
            mask[size // 4: size // 2, size // 4: size // 2] = 255
            (src / "scratch" / "fold1" / "masks" / structure).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(src / "scratch" / "fold1" / "masks" / structure / f"{case}.gif")
    with pytest.raises(InputError, match="JPCLN001.IMG.*--out"):
        import_dataset("jsrt_scr", src)
    m = import_dataset("jsrt_scr", src, out=out)
    df = m.df.set_index("case_id")
    assert df.loc["JPCLN001", "finding"] == "lung_nodule" and df.loc["JPCNN002", "finding"] == "no_nodule"
    converted, header = read_image(df.loc["JPCLN001", "image"])
    assert header.bits_stored == 16 and converted.shape == (2048, 2048)
    assert converted[0, 0] < converted[0, -1]  # inversion: high raw value is dark
    mask = read_mask(df.loc["JPCLN001", "mask_left_lung"], expected_shape=(2048, 2048))
    assert mask.sum() == 512 * 512  # nearest-neighbour upscale of a 256x256 square
    assert df.loc["JPCNN002", "mask_heart"].endswith("JPCNN002.gif")  # same size: referenced in place
    assert errors(validate_manifest(m)) == []


def test_montgomery_assigns_sides_by_centroid_and_reads_clinical(tmp_path):
    src = tmp_path / "MontgomerySet"
    img(src / "CXR_png" / "MCUCXR_0001_0.png")
    img(src / "CXR_png" / "MCUCXR_0002_1.png")
    for name in ("MCUCXR_0001_0.png", "MCUCXR_0002_1.png"):
        lung(src / "ManualMask" / "leftMask" / name, x0=36, x1=56)   # image right half = patient left
        lung(src / "ManualMask" / "rightMask" / name, x0=8, x1=28)
    (src / "ClinicalReadings").mkdir()
    (src / "ClinicalReadings" / "MCUCXR_0002_1.txt").write_text(
        "Patient's Sex: F\nPatient's Age: 035Y\nright upper lobe cavity\n")
    m = import_dataset("montgomery", src)
    df = m.df.set_index("patient_id")
    row = df.loc["montgomery_MCUCXR_0002"]
    assert row["finding"] == "tuberculosis" and row["sex"] == "F" and row["age"] == 35
    assert "rightMask" in row["mask_right_lung"] and "leftMask" in row["mask_left_lung"]
    assert df.loc["montgomery_MCUCXR_0001", "finding"] == "normal"
    assert errors(validate_manifest(m)) == []


def test_shenzhen_with_masks_and_readings(tmp_path):
    src = tmp_path / "ChinaSet_AllFiles"
    img(src / "CXR_png" / "CHNCXR_0001_0.png")
    img(src / "CXR_png" / "CHNCXR_0002_1.png")
    lung(src / "mask" / "CHNCXR_0002_1_mask.png")
    (src / "ClinicalReadings").mkdir()
    (src / "ClinicalReadings" / "CHNCXR_0002_1.txt").write_text("male 45yrs\nPTB in the left upper field\n")
    m = import_dataset("shenzhen", src)
    df = m.df.set_index("patient_id")
    assert len(df) == 2 and df.loc["shenzhen_CHNCXR_0002", "sex"] == "M"
    assert df.loc["shenzhen_CHNCXR_0002", "age"] == 45 and df.loc["shenzhen_CHNCXR_0002", "finding"] == "tuberculosis"
    assert df.loc["shenzhen_CHNCXR_0002", "mask_lungs"].endswith("CHNCXR_0002_1_mask.png")
    assert pd.isna(df.loc["shenzhen_CHNCXR_0001", "mask_lungs"])
    assert errors(validate_manifest(m)) == []


def test_folder_importer(tmp_path):
    img(tmp_path / "data" / "Normal" / "n1_a.png")
    img(tmp_path / "data" / "Normal" / "n1_b.png")
    img(tmp_path / "data" / "COVID" / "sub" / "c7_a.jpg")
    m = import_dataset("folder", tmp_path / "data", patient_regex=r"^([a-z]\d+)_")
    assert sorted(m.df["finding"]) == ["covid", "normal", "normal"]
    assert m.df["patient_id"].nunique() == 2
    per_image = import_dataset("folder", tmp_path / "data", label="diagnosis")
    assert per_image.df["patient_id"].nunique() == 3 and "diagnosis" in per_image.df


def test_csv_importer_with_mapping(tmp_path):
    img(tmp_path / "imgs" / "x.png"), img(tmp_path / "imgs" / "y.png")
    pd.DataFrame({"file": ["x.png", "y.png"], "pid": ["A", "B"], "dx": ["normal", "covid19"],
                  "projection": ["PA", "lateral"], "site": ["s1", "s2"]}).to_csv(tmp_path / "t.csv", index=False)
    m = import_dataset("csv", tmp_path / "t.csv", columns="image=file,patient_id=pid,finding=dx,view=projection",
                       image_root=tmp_path / "imgs", source_dataset="mine")
    assert m.df["view"].tolist() == ["PA", "L"] and m.df["site"].tolist() == ["s1", "s2"]
    assert m.df["source_dataset"].unique().tolist() == ["mine"]
    assert errors(validate_manifest(m)) == []
    with pytest.raises(InputError, match="mapped column.*nope"):
        import_dataset("csv", tmp_path / "t.csv", columns="image=nope")
    with pytest.raises(InputError, match="no 'patient_id' column"):
        import_dataset("csv", tmp_path / "t.csv", columns="image=file")
