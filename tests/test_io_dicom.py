"""segmote.io's DICOM reader on real files: Hounsfield units, colour images, oblique series written
back as NIfTI in the same world geometry, several series, missing slices, empty folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from segmote.errors import InputError
from segmote.io import read_image, write_label
from io_helpers import CT_SMALL, MR_SMALL, assert_input_error, write_series


# ---------------------------------------------------------------------------- DICOM

def test_ct_small_is_in_hounsfield_units():
    ds = pydicom.dcmread(CT_SMALL)
    img = read_image(CT_SMALL)
    assert (img.is_volume, img.format, img.modality) == (True, "dicom", "CT")
    assert img.array.shape == (128, 128, 1) and img.array.dtype == np.int16
    assert float(ds.RescaleIntercept) == -1024.0
    expected = ds.pixel_array.T.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    np.testing.assert_array_equal(img.array[:, :, 0], expected)
    assert img.array.min() == -896 and img.array.max() == 1167  # HU: air-ish lung to bone


def test_mr_small_modality_and_raw_values():
    img = read_image(MR_SMALL)
    assert img.modality == "MR" and img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array[:, :, 0], pydicom.dcmread(MR_SMALL).pixel_array.T)


def test_colour_dicom_is_a_2d_image(tmp_path):
    path = Path(get_testdata_file("examples_rgb_color.dcm"))  # ultrasound, RGB, 240 x 320
    img = read_image(path)
    assert (img.is_volume, img.modality, img.array.shape) == (False, "US", (240, 320, 3))
    np.testing.assert_array_equal(img.array, pydicom.dcmread(path).pixel_array)  # rows x cols
    out = write_label(img.array[..., 0] > 100, img, tmp_path)
    assert out.name == "examples_rgb_color_seg.png" and read_image(out).array.shape == (240, 320)


def test_dicom_series_to_nifti_keeps_world_geometry(tmp_path):
    geo = write_series(tmp_path / "series", 4)
    (tmp_path / "series" / "README.txt").write_text("not a DICOM file")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evenly spaced, one series: no warning
        img = read_image(tmp_path / "series")
    assert img.array.shape == (128, 128, 4) and img.array.dtype == np.int16
    assert img.modality == "CT" and img.format == "dicom"
    np.testing.assert_allclose(img.spacing, (0.661468, 0.661468, 2.5), atol=1e-3)
    raw = pydicom.dcmread(CT_SMALL).pixel_array.T.astype(np.int32)
    for k in range(4):  # slices in position order, rescaled to HU
        np.testing.assert_array_equal(img.array[:, :, k], raw + 10 * k - 1024)
    label = np.zeros(img.array.shape, np.uint8)
    label[10:20, 30:50, 1:3] = 1
    out = write_label(label, img, tmp_path / "pred")
    assert out == tmp_path / "pred" / "series_seg.nii.gz"
    nii = nib.load(out)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), label)
    # Voxel (i, j, k) per DICOM: IPP_k + i * col_spacing * row_dir + j * row_spacing * col_dir
    # (LPS). The NIfTI affine must give the same point in RAS: x and y negated.
    row_sp, col_sp = geo["pixel_spacing"]
    for ijk in [(0, 0, 0), (127, 0, 0), (0, 127, 3), (17, 93, 2)]:
        i, j, k = ijk
        lps = geo["positions"][k] + i * col_sp * geo["row"] + j * row_sp * geo["col"]
        np.testing.assert_allclose((nii.affine @ [*ijk, 1])[:3], lps * [-1, -1, 1], atol=1e-3)


def test_single_dicom_file_writes_nifti(tmp_path):
    img = read_image(CT_SMALL)
    nii = nib.load(write_label(img.array > 0, img, tmp_path))
    assert nii.shape == (128, 128, 1)
    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    lps = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(nii.affine[:3, 3], lps * [-1, -1, 1], atol=1e-4)


def test_several_series_are_listed_and_one_is_chosen_by_uid(tmp_path):
    write_series(tmp_path / "mixed", 3, series_uid="1.2.826.0.1.3680043.8.498.1")
    write_series(tmp_path / "mixed", 1, series_uid="1.2.826.0.1.3680043.8.498.2", start=10)
    with pytest.raises(InputError) as err:  # never a silent pick of the largest
        read_image(tmp_path / "mixed")
    message = str(err.value)
    assert "holds 2 DICOM series, choose one by its UID" in message
    assert '1.2.826.0.1.3680043.8.498.1 "" CT 128x128 x 3 files' in message
    assert "1.2.826.0.1.3680043.8.498.2" in message and "\n" not in message
    img = read_image(tmp_path / "mixed", series="1.2.826.0.1.3680043.8.498.2")
    assert img.array.shape == (128, 128, 1) and img.meta["series_uid"].endswith("498.2")
    with pytest.raises(InputError, match="no DICOM series 9.9; found"):
        read_image(tmp_path / "mixed", series="9.9")


def test_missing_slice_warns(tmp_path):
    write_series(tmp_path / "gap", 5)
    (tmp_path / "gap" / "IM00_003.dcm").unlink()  # slice k = 2
    with pytest.warns(UserWarning, match="unevenly spaced"):
        img = read_image(tmp_path / "gap")
    assert img.array.shape == (128, 128, 4)


def test_empty_and_non_dicom_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty") as err:
        read_image(tmp_path / "empty")
    assert_input_error(err, "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM series") as err:
        read_image(tmp_path / "notes")
    assert_input_error(err, "notes")
