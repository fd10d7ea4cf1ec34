"""The one in-memory image type every reader returns, the file-ending table and geometry helpers.

Conventions (shared by all readers and writers):
- 2-D images: ``array`` is (H, W) or (H, W, C), rows x cols; ``spacing`` is (row, col) in mm.
- 3-D volumes: ``array`` is (X, Y, Z), the voxel index order (i, j, k) as stored on disk, i.e.
  what nibabel's ``img.dataobj[i, j, k]`` and SimpleITK's ``image[i, j, k]`` give; ``spacing`` is
  per array axis in mm and ``meta["affine"]`` maps (i, j, k, 1) to RAS+ world coordinates in mm.
  Readers built on SimpleITK also keep ``origin``/``spacing``/``direction`` in ITK's LPS+ world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmote.errors import InputError

# File ending -> format name. `.nii.gz` is the only two-part ending, so it is tested first.
READ_FORMATS: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".npz": "npz",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
    ".dcm": "dicom",
    ".dicom": "dicom",
}


@dataclass
class ImageData:
    """An image or volume plus what is needed to write a label map on the same grid.

    array: (H, W) or (H, W, C) for 2-D images; (X, Y, Z) for volumes, on-disk dtype.
    is_volume: True for (X, Y, Z) volumes (also a single slice, Z = 1).
    spacing: mm per array axis; 2-D: (row, col), (1.0, 1.0) when the file does not say.
    format: 'png' | 'jpg' | 'bmp' | 'tiff' | 'npy' | 'npz' | 'nifti' | 'nrrd' | 'mha' | 'dicom'.
    path: the file (or DICOM folder) it was read from.
    meta: geometry for the writers: 'affine' (4x4 RAS, volumes), NIfTI 'header', ITK 'origin',
        'spacing', 'direction', 'dimension' (LPS), DICOM 'series_uid' and 'files', ...
    modality: 'CT', 'MR', ... when the file says so (DICOM Modality), else None.
    """

    array: np.ndarray = field(repr=False)
    is_volume: bool
    spacing: tuple[float, ...]
    format: str
    path: Path
    meta: dict = field(default_factory=dict, repr=False)
    modality: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``array``."""
        return tuple(self.array.shape)


def split_ext(path: str | Path) -> tuple[str, str]:
    """Split a file name into (stem, lower-case ending), treating ``.nii.gz`` as one ending."""
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")], ".nii.gz"
    suffix = Path(name).suffix
    return (name[: -len(suffix)] if suffix else name), suffix.lower()


def read_format(path: Path) -> str:
    """Format name for a file to read, chosen by its ending; InputError if unknown."""
    ext = split_ext(path)[1]
    if ext not in READ_FORMATS:
        known = " ".join(sorted(READ_FORMATS))
        shown = f"'{ext}'" if ext else "(no file ending)"
        raise InputError(f"{path}: unknown image format {shown}; expected one of {known} "
                         "or a folder holding a DICOM series")
    return READ_FORMATS[ext]


def short_reason(err: BaseException, limit: int = 160) -> str:
    """One short line from a library exception (SimpleITK's are multi-line with C++ paths)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    # SimpleITK/ITK put the useful part on the last line, after the source-file location.
    line = lines[-1] if "sitk" in lines[0] or "itk" in lines[0].lower() else lines[0]
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        line = line.split(prefix, 1)[-1].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """Return ``array`` in native byte order (big-endian NIfTI/TIFF data breaks torch.from_numpy)."""
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


def itk_to_ras_affine(origin, spacing, direction) -> np.ndarray:
    """4x4 voxel (i, j, k) -> RAS+ mm affine from ITK's LPS+ origin (3,), spacing (3,), direction (9,).

    ITK: p_LPS = origin + D @ diag(spacing) @ (i, j, k). RAS = LPS with x and y negated, so the
    first two rows of the matrix and of the origin change sign.
    """
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)
    affine[:3, 3] = np.asarray(origin, float)
    affine[:2, :] *= -1.0
    return affine + 0.0  # + 0.0 turns the -0.0 entries from the sign flip into 0.0


def ras_affine_to_itk(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """Inverse of :func:`itk_to_ras_affine`: (origin (3,), spacing (3,), direction (9,)) in LPS+."""
    lps = np.array(affine, float)
    lps[:2, :] *= -1.0
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return tuple(lps[:3, 3]), tuple(spacing), tuple(direction.ravel())


def embed_itk_geometry(origin, spacing, direction) -> tuple[tuple, tuple, tuple]:
    """Lift a 2-D ITK geometry (2,), (2,), (4,) to 3-D with a unit z axis; 3-D passes through."""
    if len(origin) == 3:
        return tuple(origin), tuple(spacing), tuple(direction)
    d3 = np.eye(3)
    d3[:2, :2] = np.asarray(direction, float).reshape(2, 2)
    return (*origin, 0.0), (*spacing, 1.0), tuple(d3.ravel())


def sitk_volume(image, path: Path) -> tuple[np.ndarray, tuple[float, ...], dict]:
    """SimpleITK scalar image (2-D or 3-D) -> (X, Y, Z) array view, spacing (3,), geometry meta.

    GetArrayFromImage gives (z, y, x); the transpose is a free view back to index order.
    A 2-D image becomes (X, Y, 1); ``meta['dimension']`` remembers it for the writer.
    """
    import SimpleITK as sitk

    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per "
                         "voxel; only scalar (grey-value) volumes are supported")
    if dim not in (2, 3):
        raise InputError(f"{path}: {dim}-D image of size {image.GetSize()} is not supported")
    array = sitk.GetArrayFromImage(image).T
    if dim == 2:
        array = array[:, :, None]
    origin, spacing, direction = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    origin3, spacing3, direction3 = embed_itk_geometry(origin, spacing, direction)
    meta = {"origin": origin, "spacing": spacing, "direction": direction, "dimension": dim,
            "affine": itk_to_ras_affine(origin3, spacing3, direction3)}
    return array, tuple(float(s) for s in spacing3), meta
