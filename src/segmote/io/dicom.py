"""DICOM: one file, or a folder holding a series, read with SimpleITK (GDCM) into (X, Y, Z).

GDCM applies RescaleSlope/RescaleIntercept, so CT comes out in HU; pydicom reads only the header
(``stop_before_pixels=True``) for the Modality tag. Geometry stays in ITK's LPS+ terms
(``origin``/``spacing``/``direction``) plus the RAS+ ``affine`` a NIfTI label is written with.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from segmote.errors import InputError
from segmote.io.image import ImageData, short_reason, sitk_volume


def read_dicom_file(path: Path) -> ImageData:
    """One DICOM file: grey -> volume (X, Y, 1) (or (X, Y, frames)); single-frame colour ->
    2-D image (H, W, 3) with (row, col) spacing from PixelSpacing."""
    import SimpleITK as sitk

    try:
        with _itk_warnings_off():
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{path}: cannot read DICOM file ({short_reason(err)})") from None
    header = _header(path)
    if image.GetNumberOfComponentsPerPixel() > 1:
        return _colour_image(image, path, header)
    array, spacing, meta = sitk_volume(image, path)
    meta.update(_header_meta(header), files=[str(path)])
    return ImageData(compact_dtype(array), True, spacing, "dicom", path, meta, _modality(header))


def read_dicom_series(folder: Path) -> ImageData:
    """The DICOM series in ``folder`` (not its subfolders) as (X, Y, Z), slices in GDCM's
    position order. With several series, the one with most files is read and a warning says so."""
    import SimpleITK as sitk

    try:
        has_files = any(p.is_file() for p in folder.iterdir())
    except OSError as err:
        raise InputError(f"{folder}: cannot list folder ({short_reason(err)})") from None
    if not has_files:
        raise InputError(f"{folder}: folder is empty; expected the files of one DICOM series")
    with _itk_warnings_off():  # GDCM prints a warning per non-DICOM file; we report ourselves
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        series = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
                  for uid in series_ids}
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder "
                         "(give the folder that directly holds the slice files)")
    uid = max(series, key=lambda u: len(series[u]))
    if len(series) > 1:
        sizes = ", ".join(f"{u} ({len(f)} files)" for u, f in series.items())
        warnings.warn(f"{folder}: {len(series)} DICOM series found: {sizes}; reading {uid}, "
                      "the one with most files", stacklevel=3)
    files = list(series[uid])
    image = _read_series(folder, uid, files)
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"{folder}: colour DICOM series are not supported")
    array, spacing, meta = sitk_volume(image, folder)
    header = _header(Path(files[0]))
    meta.update(_header_meta(header), series_uid=uid, files=files)
    return ImageData(compact_dtype(array), True, spacing, "dicom", folder, meta, _modality(header))


def _read_series(folder: Path, uid: str, files: list[str]):
    """Read the files of one series into a SimpleITK image; warn on uneven slice spacing."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice tags, for the spacing check below
    try:
        with _itk_warnings_off():  # ITK warns even for rounding noise in the positions
            image = reader.Execute()
    except RuntimeError as err:
        raise InputError(f"{folder}: cannot read DICOM series {uid} ({short_reason(err)})") from None
    deviation = _slice_spacing_deviation(reader, image)
    if deviation > 1e-3 + 0.01 * image.GetSpacing()[2]:
        # ITK puts the slices on a uniform z grid; a label written on it would be off there.
        warnings.warn(f"{folder}: slices of series {uid} are unevenly spaced or missing (up to "
                      f"{deviation:.3g} mm off); the z spacing is an average", stacklevel=4)
    return image


def _slice_spacing_deviation(reader, image) -> float:
    """Largest |gap - spacing| in mm between consecutive slice positions along the normal."""
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        return 0.0
    normal = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, 2]
    try:
        positions = [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                     for i in range(image.GetSize()[2])]
    except (RuntimeError, ValueError):  # no ImagePositionPatient: nothing to check against
        return 0.0
    gaps = np.diff(np.asarray(positions) @ normal)
    return float(np.max(np.abs(np.abs(gaps) - image.GetSpacing()[2])))


def compact_dtype(array: np.ndarray) -> np.ndarray:
    """Undo GDCM's widening: rescaled int16 CT arrives as int32 and float slopes as float64.

    Integers go back to int16/uint16 when the values fit, floats to float32 (a 512x512x300 CT
    is 150 MB as int16, 300 MB as int32).
    """
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize > 2 and array.size:
        lo, hi = array.min(), array.max()
        for dtype in (np.int16, np.uint16):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return array.astype(dtype)
    return array


def _colour_image(image, path: Path, header) -> ImageData:
    """Single-frame colour DICOM (endoscopy, dermoscopy, secondary capture) as (H, W, C)."""
    import SimpleITK as sitk

    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] != 1:
        raise InputError(f"{path}: multi-frame colour DICOM ({size[2]} frames) is not supported")
    array = sitk.GetArrayFromImage(image).reshape(size[1], size[0], -1)  # (H, W, C)
    col, row = image.GetSpacing()[:2]
    meta = _header_meta(header)
    meta.update(origin=image.GetOrigin(), direction=image.GetDirection(), files=[str(path)])
    return ImageData(array, False, (float(row), float(col)), "dicom", path, meta, _modality(header))


def _header(path: Path):
    """The DICOM header without pixel data, or None if pydicom cannot parse it."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # GDCM read it; a header pydicom rejects only costs us the modality
        return None


def _modality(header) -> str | None:
    """Modality tag ('CT', 'MR', ...) or None."""
    value = str(getattr(header, "Modality", "") or "").strip().upper() if header else ""
    return value or None


def _header_meta(header) -> dict:
    """Header facts worth keeping: the rescale GDCM applied, the series UID."""
    if header is None:
        return {}
    meta = {"rescale_slope": float(getattr(header, "RescaleSlope", 1) or 1),
            "rescale_intercept": float(getattr(header, "RescaleIntercept", 0) or 0)}
    if getattr(header, "SeriesInstanceUID", None):
        meta["series_uid"] = str(header.SeriesInstanceUID)
    return meta


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's stderr warnings for a moment (global flag, restored on exit)."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
