"""DICOM reading: MONOCHROME1, 16-bit, rescale slope/intercept, windowing, compression, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from cxrlab.errors import InputError
from cxrlab.io import deidentify_dicom, image_size, read_image, read_image_bytes
from cxrlab.utils import salted_hash


def make_dicom(path: Path | None, pixels: np.ndarray, *, modality: str = "CR", photometric: str = "MONOCHROME2",
               bits_stored: int | None = None, slope: float | None = None, intercept: float | None = None,
               window: tuple[float, float] | None = None, compress: str | None = None, with_pixels: bool = True,
               **tags) -> Dataset:
    """A minimal, valid single-frame radiograph; extra keyword arguments become DICOM attributes."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = tags.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = tags.pop("SeriesInstanceUID", generate_uid())
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = tags.pop("PatientID", "PID-0001")
    ds.PatientBirthDate = "19600101"
    ds.PatientAddress = "1 Main Street"
    ds.AccessionNumber = tags.pop("AccessionNumber", "ACC-42")
    ds.PatientSex = tags.pop("PatientSex", "F")
    ds.PatientAge = tags.pop("PatientAge", "064Y")
    ds.StudyDate = tags.pop("StudyDate", "20200401")
    ds.ViewPosition = tags.pop("ViewPosition", "PA")
    for key, value in tags.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        ds.PixelData = pixels.tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if compress == "rle":
        ds.compress(RLELossless, pixels)
    elif compress == "j2k":  # encoded by pylibjpeg-openjpeg
        ds.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
    if path is not None:
        ds.save_as(path, enforce_file_format=True)
    return ds


def ramp(dtype=np.uint16, hi: int = 4095, shape=(64, 80)) -> np.ndarray:
    return np.linspace(0, hi, shape[0] * shape[1]).reshape(shape).astype(dtype)


def test_monochrome2_16bit_minmax_without_window(tmp_path):
    path = tmp_path / "a.dcm"
    make_dicom(path, ramp(), bits_stored=12)
    img, header = read_image(path)
    assert img.dtype == np.float32 and img.shape == (64, 80)
    assert img.min() == 0.0 and img.max() == 1.0
    assert img[0, 0] < img[-1, -1]  # ramp direction kept
    assert header.bits_stored == 12 and header.modality == "CR" and header.view_position == "PA"
    assert header.age == 64 and header.sex == "F" and header.study_date == "20200401"


def test_monochrome1_is_inverted(tmp_path):
    make_dicom(tmp_path / "m2.dcm", ramp())
    make_dicom(tmp_path / "m1.dcm", ramp(), photometric="MONOCHROME1")
    m2, _ = read_image(tmp_path / "m2.dcm")
    m1, header = read_image(tmp_path / "m1.dcm")
    assert header.photometric == "MONOCHROME1"
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


def test_rescale_then_window_uses_output_range(tmp_path):
    # stored 0..1000, slope 2 intercept -1000 -> -1000..1000; window centre 0 width 1000 -> [-500, 500]
    stored = np.array([[0, 300, 500, 700, 1000]] * 40, dtype=np.uint16)
    stored = np.tile(stored, (1, 8))
    make_dicom(tmp_path / "w.dcm", stored, bits_stored=12, slope=2.0, intercept=-1000.0, window=(0.0, 1000.0))
    img, _ = read_image(tmp_path / "w.dcm")
    row = img[0, :5]
    assert row[0] == pytest.approx(0.0, abs=1e-3)  # -1000 below the window
    assert row[4] == pytest.approx(1.0, abs=1e-3)  # 1000 above the window
    assert row[2] == pytest.approx(0.5, abs=0.01)  # 0 is the window centre
    assert 0.0 < row[1] < row[2] < row[3] <= 1.0


def test_rescale_slope_changes_nothing_without_window_but_is_applied(tmp_path):
    # a negative slope flips the order of values: the modality LUT must be applied before normalising
    make_dicom(tmp_path / "s.dcm", ramp(), slope=-1.0, intercept=4095.0)
    img, _ = read_image(tmp_path / "s.dcm")
    assert img[0, 0] == pytest.approx(1.0) and img[-1, -1] == pytest.approx(0.0)


@pytest.mark.parametrize("codec, uid", [("rle", RLELossless), ("j2k", JPEG2000Lossless)])
def test_compressed_matches_uncompressed(tmp_path, codec, uid):
    pixels = ramp()
    make_dicom(tmp_path / "raw.dcm", pixels, bits_stored=12)
    make_dicom(tmp_path / "c.dcm", pixels, bits_stored=12, compress=codec)
    assert pydicom.dcmread(tmp_path / "c.dcm").file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(read_image(tmp_path / "raw.dcm")[0], read_image(tmp_path / "c.dcm")[0])


def test_8bit_dicom(tmp_path):
    make_dicom(tmp_path / "b.dcm", ramp(np.uint8, 255), modality="DX")
    img, header = read_image(tmp_path / "b.dcm")
    assert header.bits_stored == 8 and img.max() == 1.0


def test_type_by_content_not_extension(tmp_path):
    path = tmp_path / "looks_like.png"
    make_dicom(path, ramp())
    assert read_image(path)[1].format == "dicom"
    assert read_image_bytes(path.read_bytes(), "upload")[1].format == "dicom"


def test_identifiers_are_hashed_and_names_absent(tmp_path):
    make_dicom(tmp_path / "id.dcm", ramp())
    _, header = read_image(tmp_path / "id.dcm")
    assert header.patient_hash == salted_hash("PID-0001") and header.accession_hash == salted_hash("ACC-42")
    text = repr(header.to_dict())
    for secret in ("PID-0001", "ACC-42", "Doe", "19600101", "Main Street"):
        assert secret not in text


def test_deidentify_dicom_strips_and_hashes(tmp_path):
    ds = make_dicom(None, ramp())
    ds.add_new((0x0011, 0x0010), "LO", "VENDOR")  # private creator
    deidentify_dicom(ds, salt="s")
    assert "PatientName" not in ds and "PatientBirthDate" not in ds and "PatientAddress" not in ds
    assert ds.PatientID == salted_hash("PID-0001", "s") and ds.AccessionNumber == salted_hash("ACC-42", "s")
    assert (0x0011, 0x0010) not in ds and ds.PatientIdentityRemoved == "YES"


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_non_radiograph_modality_rejected(tmp_path, modality):
    make_dicom(tmp_path / "ct.dcm", ramp(), modality=modality)
    with pytest.raises(InputError, match=rf"ct.dcm.*modality {modality} is not a projection radiograph"):
        read_image(tmp_path / "ct.dcm")


def test_missing_pixel_data(tmp_path):
    make_dicom(tmp_path / "np.dcm", ramp(), with_pixels=False)
    with pytest.raises(InputError, match="np.dcm.*no pixel data"):
        read_image(tmp_path / "np.dcm")


def test_truncated_dicom(tmp_path):
    path = tmp_path / "t.dcm"
    make_dicom(path, ramp())
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(InputError, match="t.dcm.*(corrupt|truncated)"):
        read_image(path)


def test_unsupported_transfer_syntax(tmp_path):
    path = tmp_path / "mpeg.dcm"
    ds = make_dicom(None, ramp())
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no pydicom decoder
    ds.PixelData = encapsulate([ramp().tobytes()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match="mpeg.dcm.*unsupported transfer syntax"):
        read_image(path)


def test_missing_plugin_names_the_package(tmp_path, monkeypatch):
    import cxrlab.io.dicom as dicom_mod

    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom_mod, "get_decoder", lambda uid: Unavailable())
    path = tmp_path / "rle.dcm"
    make_dicom(path, ramp(), compress="rle")
    with pytest.raises(InputError, match="pip install pylibjpeg-rle"):
        read_image(path)


def test_size_limits(tmp_path):
    make_dicom(tmp_path / "small.dcm", ramp(shape=(16, 16)))
    with pytest.raises(InputError, match="smaller than the minimum"):
        read_image(tmp_path / "small.dcm")
    make_dicom(tmp_path / "big.dcm", ramp())
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(tmp_path / "big.dcm", max_pixels=1000)
    assert image_size(tmp_path / "big.dcm") == (64, 80)


def test_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset as Item
    from pydicom.sequence import Sequence

    ds = make_dicom(None, ramp(), bits_stored=12)
    item = Item()
    item.add_new((0x0028, 0x3002), "US", [4096, 0, 16])  # LUT Descriptor: entries, first value, bits
    item.add_new((0x0028, 0x3006), "US", [65535 - 16 * v for v in range(4096)])  # reversing LUT Data
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "lut.dcm", enforce_file_format=True)
    img, _ = read_image(tmp_path / "lut.dcm")  # output range from the descriptor: 0..65535
    assert img[0, 0] == pytest.approx(1.0) and img[-1, -1] == pytest.approx(15 / 65535, abs=1e-7)


def test_dicom_without_preamble_named_dcm(tmp_path):
    path = tmp_path / "raw.dcm"
    make_dicom(path, ramp())
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.save_as(tmp_path / "nopre.dcm", enforce_file_format=False)
    stripped = (tmp_path / "nopre.dcm").read_bytes()
    assert stripped[128:132] != b"DICM"
    img, header = read_image_bytes(stripped, "nopre.dcm")
    assert header.format == "dicom" and img.shape == (64, 80)
