"""Shared by the segmote.io tests (and the server's DICOM test): real test files of nibabel and
pydicom, a real-data volume, an oblique DICOM series writer, and the one-line error check."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.testing import data_path
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

NIB = Path(data_path)
ANAT = NIB / "anatomical.nii"  # (33, 41, 25) big-endian int16, qform = sform = code 2
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # 128x128 int16, intercept -1024
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))  # 64x64 int16, no rescale


def anat_data() -> np.ndarray:
    """The real anatomical volume in nibabel's (i, j, k) indexing, native int16."""
    return np.asarray(nib.load(ANAT).dataobj).astype(np.int16)


def assert_input_error(excinfo, name: str) -> None:
    """The message is one line and names the file."""
    message = str(excinfo.value)
    assert name in message, message
    assert "\n" not in message, message


def rotation(a: float, b: float) -> np.ndarray:
    """Orthonormal 3x3 (columns = axes): rotation by a about z after tilt b about x."""
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def write_series(folder: Path, n: int, series_uid: str | None = None, start: int = 0) -> dict:
    """Write n oblique slices made from CT_small into ``folder``; slice k holds raw + 10 k.

    File names run against the slice order, so reading by name would give the wrong order.
    Returns the geometry used: row/col direction cosines, positions, pixel spacing.
    """
    folder.mkdir(exist_ok=True)
    src = pydicom.dcmread(CT_SMALL)
    axes = rotation(0.35, 0.25)
    row_dir, col_dir, normal = axes[:, 0], axes[:, 1], axes[:, 2]
    origin = np.array([float(v) for v in src.ImagePositionPatient])
    uid = series_uid or generate_uid()
    positions = []
    for k in range(start, start + n):
        ds = copy.deepcopy(src)
        position = origin + 2.5 * k * normal
        positions.append(position)
        ds.SeriesInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(f"{v:.6f}") for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(f"{v:.4f}") for v in position]
        ds.SliceLocation = float(f"{2.5 * k:.4f}")
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = (src.pixel_array + 10 * k).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{start:02d}_{start + n - k:03d}.dcm")
    spacing = [float(v) for v in src.PixelSpacing]
    return {"row": row_dir, "col": col_dir, "positions": positions, "pixel_spacing": spacing}


def make_itk_volume(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """A crop of the real anatomical volume with anisotropic spacing, origin and an oblique
    direction, written with SimpleITK. Returns the (i, j, k) array and the image."""
    crop = anat_data()[4:28, 3:36, 2:20]
    image = sitk.GetImageFromArray(np.ascontiguousarray(crop.T))
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((-12.5, 30.25, 7.0))
    image.SetDirection(tuple(rotation(0.4, -0.3).ravel()))
    sitk.WriteImage(image, str(path))
    return crop, image
