"""Readers, one per format family, chosen by file ending behind :func:`read_image`.

Every expected failure (missing, unknown ending, truncated or corrupt file, unsupported layout)
raises :class:`InputError` with one line naming the file; library exceptions are rewrapped.
Heavy libraries (SimpleITK, pydicom, nibabel, tifffile, Pillow) are imported where used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from segmote.errors import InputError
from segmote.io.dicom import read_dicom_file, read_dicom_series
from segmote.io.image import ImageData, native_byte_order, read_format, short_reason, sitk_volume


def read_image(path: str | Path) -> ImageData:
    """Read a 2-D image, a volume, a DICOM file or a folder holding a DICOM series.

    Returns ImageData with array (H, W[, C]) for images or (X, Y, Z) for volumes (see
    :mod:`segmote.io.image` for the conventions). Raises InputError for any bad input.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        return read_dicom_series(path)
    return _READERS[read_format(path)](path)


# ---------------------------------------------------------------- 2-D images

def _image_2d(array: np.ndarray, path: Path, fmt: str, meta: dict | None = None) -> ImageData:
    """Wrap a (H, W) or (H, W, C) array as a 2-D ImageData with unknown (unit) spacing."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise InputError(f"{path}: expected a 2-D image (H, W) or (H, W, C), got shape {array.shape}")
    return ImageData(native_byte_order(array), False, (1.0, 1.0), fmt, path, meta or {})


# Pillow modes kept as they are; the others are converted to one of these first.
_PIL_KEEP = {"L", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"}


def _read_pillow(path: Path, fmt: str) -> ImageData:
    """PNG / JPEG / BMP (and TIFF fallback) with Pillow: (H, W) or (H, W, 3|4), file dtype."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise InputError(f"{path}: has {img.n_frames} frames/pages; only single-frame "
                                 "2-D images are supported (convert stacks to NIfTI)")
            img.load()  # decode now, so truncated files fail here and not later
            if img.mode not in _PIL_KEEP:
                # Palette, 1-bit, CMYK, YCbCr, grey+alpha: give plain grey or RGB pixels.
                img = img.convert("L" if img.mode in ("1", "LA", "La") else "RGB")
            array = np.array(img)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as err:
        raise InputError(f"{path}: cannot read {fmt.upper()} file ({short_reason(err)})") from None
    return _image_2d(array, path, fmt, {"mode": img.mode})


def _read_tiff(path: Path, fmt: str = "tiff") -> ImageData:
    """TIFF with tifffile (exact dtype: 16-bit RGB, float...), Pillow if tifffile cannot decode.

    tifffile goes first because Pillow silently reduces 16-bit RGB to 8 bits; Pillow is the
    fallback for compressions tifffile needs the optional `imagecodecs` package for (LZW, JPEG).
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, n_pages = series.axes, len(tif.pages)
            if n_pages > 1 or not (axes == "YX" or (axes == "YXS" and series.ndim == 3)):
                raise InputError(f"{path}: TIFF with axes {axes!r} and {n_pages} page(s) is not "
                                 "a single 2-D image; convert stacks to NIfTI")
            array = series.asarray()
    except InputError:
        raise
    except Exception:  # TiffFileError, ValueError (codec needs imagecodecs), ...: try Pillow
        return _read_pillow(path, fmt)
    return _image_2d(array, path, fmt, {"axes": axes})


# ---------------------------------------------------------------- numpy arrays

def _from_array(array: np.ndarray, path: Path, fmt: str, spacing=None, meta=None) -> ImageData:
    """(H, W) or (H, W, 3) -> 2-D image; other 3-D -> (X, Y, Z) volume with unit spacing."""
    meta = dict(meta or {})
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: array dtype {array.dtype} is not a numeric image")
    is_volume = array.ndim == 3 and array.shape[-1] != 3
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2-D image, (H, W, 3) or a 3-D volume, "
                         f"got an array of shape {array.shape}")
    axes = 3 if is_volume else 2
    if spacing is None:
        spacing = (1.0,) * axes
    spacing = tuple(float(s) for s in np.ravel(spacing))
    if len(spacing) != axes or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{path}: spacing {spacing} does not fit an image of shape {array.shape}")
    if is_volume:
        meta["affine"] = np.diag([*spacing, 1.0])
    return ImageData(native_byte_order(array), is_volume, spacing, fmt, path, meta)


def _read_npy(path: Path, fmt: str = "npy") -> ImageData:
    """`.npy` array; pickled (object) arrays are refused."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # ValueError (pickle / bad header), EOFError, OSError
        raise InputError(f"{path}: cannot read NPY file ({short_reason(err)})") from None
    return _from_array(array, path, fmt)


def _read_npz(path: Path, fmt: str = "npz") -> ImageData:
    """`.npz`: array ``image`` (with optional ``spacing``) if present, else the only array."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if "image" in keys:
                key = "image"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise InputError(f"{path}: holds arrays {keys} and none is named 'image'; "
                                 "cannot tell which is the image")
            array = archive[key]
            spacing = archive["spacing"] if key == "image" and "spacing" in keys else None
    except InputError:
        raise
    except Exception as err:  # BadZipFile, ValueError (pickle), EOFError, OSError
        raise InputError(f"{path}: cannot read NPZ file ({short_reason(err)})") from None
    return _from_array(array, path, fmt, spacing, {"key": key})


# ---------------------------------------------------------------- NIfTI

def _nifti_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """(X, Y) -> (X, Y, 1); (X, Y, Z, 1, ...) -> (X, Y, Z); anything else 4-D+ is refused."""
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    if len(shape) >= 3 and all(n == 1 for n in shape[3:]):
        return tuple(shape[:3])
    raise InputError(f"{path}: {len(shape)}-D NIfTI of shape {tuple(shape)} is not supported; "
                     "give one 3-D volume per file (split time points / channels)")


def _read_nifti(path: Path, fmt: str = "nifti") -> ImageData:
    """NIfTI-1/2 with nibabel: (X, Y, Z) in on-disk dtype (float only if scl_slope/inter scale)."""
    import nibabel as nib

    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
        shape = _nifti_shape(img.shape, path)
        # np.asanyarray(dataobj) keeps the stored dtype when the scaling is the identity,
        # unlike get_fdata(), which would turn an int16 CT into float64 (4x the memory).
        array = np.asanyarray(img.dataobj).reshape(shape, order="F")
    except InputError:
        raise
    except Exception as err:  # ImageFileError, EOFError, zlib.error, OSError, ValueError
        raise InputError(f"{path}: cannot read NIfTI file ({short_reason(err)})") from None
    if array.dtype.fields is not None or array.dtype.kind not in "biuf":
        raise InputError(f"{path}: NIfTI data type {array.dtype} is not a scalar image")
    affine = np.asarray(img.affine, float)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(affine))
    meta = {"affine": affine, "header": img.header.copy()}
    return ImageData(native_byte_order(np.asarray(array)), True, spacing, fmt, path, meta)


# ---------------------------------------------------------------- NRRD / MetaImage

def _read_itk(path: Path, fmt: str) -> ImageData:
    """NRRD (.nrrd/.nhdr) or MetaImage (.mha/.mhd) with SimpleITK; origin/spacing/direction kept."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{path}: cannot read {fmt.upper()} file ({short_reason(err)})") from None
    array, spacing, meta = sitk_volume(image, path)
    return ImageData(array, True, spacing, fmt, path, meta)


_READERS: dict[str, Callable[[Path], ImageData]] = {
    "png": lambda p: _read_pillow(p, "png"),
    "jpg": lambda p: _read_pillow(p, "jpg"),
    "bmp": lambda p: _read_pillow(p, "bmp"),
    "tiff": _read_tiff,
    "npy": _read_npy,
    "npz": _read_npz,
    "nifti": _read_nifti,
    "nrrd": lambda p: _read_itk(p, "nrrd"),
    "mha": lambda p: _read_itk(p, "mha"),
    "dicom": read_dicom_file,
}
