"""COVID-19-NY-SBU and MIDRC-RICORD-1c importers on DICOM trees written with pydicom by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cxrlab.data.importers import import_dataset
from cxrlab.data.importers.ricord import study_labels
from cxrlab.data.validate import errors, validate_manifest
from cxrlab.errors import InputError
from cxrlab.io import read_image
from cxrlab.utils import salted_hash
from test_io_dicom import make_dicom, ramp


def tcia_tree(root: Path, studies: list[dict]) -> None:
    """``<PatientID>/<date-desc-uid>/<series>/1-1.dcm`` like a TCIA download."""
    for i, study in enumerate(studies):
        folder = root / study["PatientID"] / f"{study['StudyDate']}-CXR-{i}" / f"{i}.000000-AP-{i}"
        folder.mkdir(parents=True)
        make_dicom(folder / "1-1.dcm", ramp(), **study)


def test_ny_sbu_tree_with_clinical_csv(tmp_path):
    src = tmp_path / "COVID-19-NY-SBU"
    tcia_tree(src, [
        dict(PatientID="A000801", StudyDate="20200301", ViewPosition="AP", modality="CR", AccessionNumber="1"),
        dict(PatientID="A000801", StudyDate="20200305", ViewPosition="AP", modality="DX", AccessionNumber="2"),
        dict(PatientID="A000802", StudyDate="20200310", ViewPosition="PA", modality="DX", PatientSex="",
             AccessionNumber="3"),
        dict(PatientID="A000802", StudyDate="20200310", modality="CT", AccessionNumber="4"),
    ])
    pd.DataFrame({"to_patient_id": ["A000801", "A000802"], "is_icu": [True, False],
                  "last.status": ["deceased", "discharged"], "gender_concept_name": ["FEMALE", "MALE"],
                  "age.splits": ["[59,74]", "[18,59]"]}).to_csv(src / "deidentified_overlap_tcia.csv", index=False)
    m = import_dataset("ny_sbu", src)
    df = m.df.sort_values(["patient_id", "offset_days"]).reset_index(drop=True)
    assert len(df) == 3 and "CT 1" in " ".join(m.attrs["notes"])
    first = df[df["patient_id"] == f"nysbu_{salted_hash('A000801')}"]
    assert first["went_icu"].tolist() == [1.0, 1.0] and first["death_event"].tolist() == [1.0, 1.0]
    assert first["offset_days"].tolist() == [0, 4]
    second = df[df["patient_id"] == f"nysbu_{salted_hash('A000802')}"]
    assert second["went_icu"].tolist() == [0.0] and second["sex"].tolist() == ["M"]  # from the clinical table
    assert set(df["view"]) == {"AP", "PA"} and set(df["modality"]) == {"CR", "DX"}
    text = df.drop(columns="image").to_csv()  # the path is the download's own folder name
    assert "A000801" not in text and "A000802" not in text  # subject ids only as salted hashes
    assert errors(validate_manifest(m)) == []
    image, _ = read_image(df["image"].iloc[0])
    assert image.shape == (64, 80)


def test_ny_sbu_clinical_without_icu_column_is_an_error(tmp_path):
    src = tmp_path / "sbu"
    tcia_tree(src, [dict(PatientID="A1", StudyDate="20200301")])
    pd.DataFrame({"to_patient_id": ["A1"]}).to_csv(tmp_path / "clinical.csv", index=False)
    with pytest.raises(InputError, match="clinical.csv.*is_icu.*ICU column missing"):
        import_dataset("ny_sbu", src, clinical=tmp_path / "clinical.csv")


def mdai_export(path: Path, votes: dict[str, list[str]]) -> None:
    names = ["Typical Appearance", "Indeterminate Appearance", "Atypical Appearance", "Negative for Pneumonia",
             "Mild", "Moderate", "Severe"]
    labels = [{"id": f"L_{i}", "name": n, "scope": "STUDY"} for i, n in enumerate(names)]
    annotations = [{"id": f"A{k}_{j}", "StudyInstanceUID": study, "labelId": f"L_{names.index(n)}",
                    "createdById": f"U{j}"} for k, (study, given) in enumerate(votes.items())
                   for j, n in enumerate(given)]
    path.write_text(json.dumps({"labelGroups": [{"id": "G", "name": "Default", "labels": labels}],
                                "datasets": [{"id": "D", "annotations": annotations}]}))


def test_ricord_dicom_and_mdai_grading(tmp_path):
    src = tmp_path / "MIDRC-RICORD-1C"
    tcia_tree(src, [
        dict(PatientID="MIDRC-RICORD-1C-419639-000082", StudyDate="20200101", StudyInstanceUID="1.2.3.1",
             modality="DX"),
        dict(PatientID="MIDRC-RICORD-1C-419639-000082", StudyDate="20200103", StudyInstanceUID="1.2.3.2",
             modality="DX"),
        dict(PatientID="MIDRC-RICORD-1C-419639-000340", StudyDate="20200101", StudyInstanceUID="1.2.3.3",
             modality="CR", photometric="MONOCHROME1"),
    ])
    mdai_export(src / "annotations.json", {
        "1.2.3.1": ["Typical Appearance", "Mild", "Typical Appearance", "Mild", "Indeterminate Appearance",
                    "Moderate"],
        "1.2.3.2": ["Typical Appearance", "Severe", "Typical Appearance", "Moderate"],  # tie -> severe
        "1.2.3.3": ["Negative for Pneumonia", "Negative for Pneumonia", "Atypical Appearance", "Mild"],
    })
    m = import_dataset("ricord", src)
    df = m.df.sort_values(["patient_id", "offset_days"]).reset_index(drop=True)
    grades = dict(zip(df["study_id"], df["ricord_grade"]))
    assert grades[salted_hash("1.2.3.1")] == "mild" and grades[salted_hash("1.2.3.2")] == "severe"
    assert grades[salted_hash("1.2.3.3")] == "negative"
    appearance = dict(zip(df["study_id"], df["ricord_appearance"]))
    assert appearance[salted_hash("1.2.3.1")] == "typical" and appearance[salted_hash("1.2.3.3")] == "negative"
    assert (df["finding"] == "covid19").all() and df["patient_id"].nunique() == 2
    assert "1.2.3.1" not in df.drop(columns="image").to_csv()
    assert errors(validate_manifest(m)) == []


def test_ricord_csv_annotations_and_missing_file(tmp_path):
    long = pd.DataFrame({"StudyInstanceUID": ["s1", "s1", "s1"], "labelName": ["Severe", "Moderate", "Severe"]})
    assert study_labels(long)["ricord_grade"].tolist() == ["severe"]
    src = tmp_path / "r"
    tcia_tree(src, [dict(PatientID="P", StudyDate="20200101", StudyInstanceUID="9.9")])
    with pytest.raises(InputError, match="no RICORD annotation file"):
        import_dataset("ricord", src)
    long.assign(StudyInstanceUID="9.9").to_csv(tmp_path / "ann.csv", index=False)
    m = import_dataset("ricord", src, annotations=tmp_path / "ann.csv")
    assert m.df["ricord_grade"].tolist() == ["severe"]
