"""Sample dicts and the torch Dataset over a Manifest (on the phantom)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxrlab.data import schema
from cxrlab.data.dataset import ManifestDataset, collate_samples, load_sample
from cxrlab.errors import InputError
from cxrlab.io import write_png


def test_load_sample_keys_types_and_values(phantom_manifest):
    row = phantom_manifest.df.iloc[0]
    s = load_sample(row)
    assert s["image"].dtype == np.float32 and s["image"].shape == (128, 128)
    assert 0.0 <= s["image"].min() < s["image"].max() <= 1.0
    for key in schema.MASK_KEYS:
        assert s[key].dtype == np.uint8 and s[key].shape == s["image"].shape and set(np.unique(s[key])) <= {0, 1}
    assert s["consolidation_mask"].shape == s["image"].shape  # extra mask column -> <name>_mask
    assert s["labels"][schema.FINDING] == row[schema.FINDING]
    assert isinstance(s["labels"][schema.BRIXIA_GLOBAL], int)
    assert s["meta"][schema.PATIENT_ID] == row[schema.PATIENT_ID] and s["meta"][schema.IMAGE] == row[schema.IMAGE]
    assert schema.IMAGE not in s["labels"] and schema.MASK_LUNGS not in s["labels"]


def test_selected_columns_only(phantom_manifest):
    s = load_sample(phantom_manifest.df.iloc[1], mask_columns=[schema.MASK_LUNGS], label_columns=[schema.WENT_ICU])
    assert set(s) == {"image", "lung_mask", "labels", "meta"} and set(s["labels"]) == {schema.WENT_ICU}


def test_dataset_transform_and_dataloader(phantom_manifest):
    def flip(sample: dict) -> dict:  # any dict -> dict callable is a transform
        return {k: (v[:, ::-1].copy() if isinstance(v, np.ndarray) else v) for k, v in sample.items()}

    ds = ManifestDataset(phantom_manifest, transform=flip, mask_columns=[schema.MASK_RIGHT_LUNG],
                         label_columns=[schema.FINDING, schema.OPACITY_RIGHT])
    assert len(ds) == len(phantom_manifest)
    plain = load_sample(phantom_manifest.df.iloc[2], [schema.MASK_RIGHT_LUNG], [schema.FINDING])
    assert np.array_equal(ds[2]["patient_right_mask"], plain["patient_right_mask"][:, ::-1])
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_samples)))
    assert batch["image"].shape == (4, 128, 128) and batch["image"].dtype == torch.float32
    assert batch["patient_right_mask"].dtype == torch.uint8
    assert len(batch["labels"][schema.FINDING]) == 4 and len(batch["meta"][schema.PATIENT_ID]) == 4


def test_truth_read_back_through_the_dataset(phantom_manifest):
    """A simple grader on sample dicts recovers the manifest's grades, and the heart sits on the image right."""
    ds = ManifestDataset(phantom_manifest)
    for i in range(0, len(ds), 5):
        s = ds[i]
        for key, side in (("patient_right_mask", "right"), ("patient_left_mask", "left")):
            lung = s[key] > 0
            fraction = (s["disease_mask"][lung] > 0).mean()
            grade = 0 if fraction == 0 else 1 if fraction <= 1 / 3 else 2 if fraction <= 2 / 3 else 3
            assert grade == s["labels"][f"opacity_{side}"]
        heart_cols = np.nonzero(s["heart_mask"])[1]
        assert heart_cols.mean() > s["image"].shape[1] / 2


def test_missing_requested_mask_and_label_are_input_errors(phantom_manifest):
    row = phantom_manifest.df.iloc[0].copy()
    row[schema.MASK_HEART] = None
    assert "heart_mask" not in load_sample(row)  # optional when not asked for
    with pytest.raises(InputError, match="mask_heart"):
        load_sample(row, mask_columns=[schema.MASK_HEART])
    with pytest.raises(InputError, match="nonexistent"):
        load_sample(row, label_columns=["nonexistent"])
    with pytest.raises(InputError, match="column not found"):
        ManifestDataset(phantom_manifest, label_columns=["nonexistent"])


def test_mask_of_the_wrong_size_names_the_file(phantom_manifest, tmp_path):
    row = phantom_manifest.df.iloc[0].copy()
    bad = write_png(tmp_path / "small.png", np.ones((64, 64), np.uint8), mask=True)
    row[schema.MASK_LUNGS] = str(bad)
    with pytest.raises(InputError, match="small.png"):
        load_sample(row, mask_columns=[schema.MASK_LUNGS])


def test_missing_image_file_is_an_input_error(phantom_manifest, tmp_path):
    row = phantom_manifest.df.iloc[0].copy()
    row[schema.IMAGE] = str(tmp_path / "gone.png")
    with pytest.raises(InputError, match="gone.png"):
        load_sample(row)
