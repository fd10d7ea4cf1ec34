"""Write a label map on the grid of the image it was predicted from, atomically.

2-D labels go to PNG (default), TIFF or .npy/.npz; volumes to the input's format family (NIfTI ->
NIfTI with the same qform/sform, NRRD/MHA -> same origin/spacing/direction, DICOM -> NIfTI with
the RAS affine of the DICOM geometry, .npy/.npz -> .npy/.npz). A DICOM input can also be written
as a DICOM Segmentation (``.dcm``, :mod:`segmote.io.dicom_seg`). Label names
(:class:`segmote.io.labels.LabelInfo`) go into DICOM-SEG segments, into the header of a Slicer
``.seg.nrrd``, and into an ITK-SNAP label description file beside NIfTI / NRRD / MHA maps.
Files are written under a temporary name in the target folder and renamed into place, so a
failure never leaves a half-written output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from segmote.atomic import atomic_path, atomic_sibling_files, atomic_write_text
from segmote.errors import InputError
from segmote.io.dicom_seg import check_dicom_source, write_dicom_seg
from segmote.io.image import ImageData, embed_itk_geometry, ras_affine_to_itk, short_reason, split_ext
from segmote.io.labels import LabelInfo, itksnap_label_text, slicer_segment_fields

# Output ending -> writer format; which of them take 2-D images and which take volumes.
WRITE_FORMATS: dict[str, str] = {
    ".png": "png", ".tif": "tiff", ".tiff": "tiff", ".npy": "npy", ".npz": "npz",
    ".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "itk", ".nhdr": "itk", ".mha": "itk", ".mhd": "itk",
    ".dcm": "dicomseg",
}
_FORMATS_2D = {"png", "tiff", "npy", "npz", "dicomseg"}
_FORMATS_3D = {"nifti", "itk", "npy", "npz", "dicomseg"}
# Formats a viewer opens with an ITK-SNAP label description file beside them.
_SIDECAR_FORMATS = {"nifti", "itk"}
# Endings whose writer puts the voxels in a second file next to the header.
_DETACHED = {".nhdr", ".mhd"}
# Input format -> default output ending, for `out` given as a folder.
_DEFAULT_EXT_3D = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom": ".nii.gz",
                   "npy": ".npy", "npz": ".npz"}
_DEFAULT_EXT_2D = {"npy": ".npy", "npz": ".npz"}  # every other 2-D input -> .png


def output_path_for(reference: ImageData, out: str | Path) -> Path:
    """Where the label of ``reference`` goes: ``out`` itself if it has a label-map ending, else
    ``out/<input stem>_seg<ext>`` when ``out`` is a folder (existing, ending in '/', or a name
    without any ending) with the default ending of the input's family (.png, .nii.gz, .nrrd, ...).
    Raises InputError for an unknown ending, or a volume into a 2-D-only format (and vice versa).
    """
    text = os.fspath(out)
    path = Path(text)
    _, ext = split_ext(path)
    is_folder = text.endswith(("/", os.sep)) or path.is_dir() or not ext
    if is_folder:
        path = path / f"{_input_stem(reference)}_seg{_default_ext(reference)}"
        ext = split_ext(path)[1]
    elif ext not in WRITE_FORMATS:
        raise InputError(f"{path}: cannot write a label map as '{ext}'; use one of "
                         f"{' '.join(sorted(WRITE_FORMATS))} or give a folder")
    fmt = WRITE_FORMATS[ext]
    if reference.is_volume and fmt not in _FORMATS_3D:
        raise InputError(f"{path}: a 3-D label map cannot be written as '{ext}' (2-D only); "
                         "use .nii.gz, .nrrd, .mha or .npy")
    if not reference.is_volume and fmt not in _FORMATS_2D:
        raise InputError(f"{path}: {reference.path.name} is a 2-D image; write its label map "
                         "as .png, .tif, .npy or .npz")
    if fmt == "dicomseg":
        check_dicom_source(reference, path)
    if path.resolve() == reference.path.resolve():
        raise InputError(f"{path}: refusing to overwrite the input image with its label map")
    return path


def label_names_path(label_path: str | Path) -> Path:
    """The ITK-SNAP label description file written beside a label map: ``<stem>_labels.txt``."""
    label_path = Path(label_path)
    return label_path.with_name(f"{split_ext(label_path)[0]}_labels.txt")


def write_label(label: np.ndarray, reference: ImageData, out_path: str | Path,
                info: LabelInfo | None = None) -> Path:
    """Write ``label`` with the geometry of ``reference``; return the path written.

    label: (H, W) for a 2-D reference (``reference.array.shape[:2]``), (X, Y, Z) for a volume;
        integer or bool values (stored as uint8 if they fit, else uint16 / int16).
    out_path: a file with a label-map ending or a folder (see :func:`output_path_for`).
    info: label names (and how they were made) for DICOM-SEG segments, a ``.seg.nrrd`` header,
        and, when it names any label, the ITK-SNAP file beside a NIfTI / NRRD / MHA map
        (:func:`label_names_path`).
    """
    info = info or LabelInfo()
    path = output_path_for(reference, out_path)
    label = _label_array(label, reference, path)
    fmt = WRITE_FORMATS[split_ext(path)[1]]
    if fmt == "png" and label.dtype == np.int16:
        raise InputError(f"{path}: PNG cannot store negative labels; use .tif or .npy")
    writer = _WRITERS[fmt]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_target(path) as tmp:
            writer(label, reference, tmp, info)
        if info.names and fmt in _SIDECAR_FORMATS and not _is_slicer_seg(path):
            atomic_write_text(label_names_path(path), itksnap_label_text(info.table(label)))
    except InputError:
        raise
    except (OSError, RuntimeError, ValueError) as err:  # disk full, no permission, ITK errors
        raise InputError(f"{path}: cannot write label map ({short_reason(err)})") from None
    return path


def _is_slicer_seg(path: Path) -> bool:
    return path.name.lower().endswith(".seg.nrrd")


def _input_stem(reference: ImageData) -> str:
    """'case' for case.nii.gz; a DICOM folder's own name."""
    return reference.path.name if reference.path.is_dir() else split_ext(reference.path)[0]


def _default_ext(reference: ImageData) -> str:
    """Default output ending for the family of the input format."""
    return default_label_ending(reference.format, reference.is_volume)


def default_label_ending(fmt: str, is_volume: bool) -> str:
    """The label-map ending for an input of format ``fmt`` (see ``READ_FORMATS``): the same
    family for volumes (DICOM -> .nii.gz), .png for 2-D images, .npy/.npz for arrays."""
    if is_volume:
        return _DEFAULT_EXT_3D.get(fmt, ".nii.gz")
    return _DEFAULT_EXT_2D.get(fmt, ".png")


def _label_array(label: np.ndarray, reference: ImageData, path: Path) -> np.ndarray:
    """Check the shape against the reference and store in the smallest label dtype that fits."""
    label = np.asarray(label)
    shape = reference.array.shape if reference.is_volume else reference.array.shape[:2]
    if label.shape != tuple(shape):
        raise InputError(f"{path}: label shape {label.shape} does not match the shape "
                         f"{tuple(shape)} of {reference.path.name}")
    if label.dtype == bool or label.size == 0:
        return label.astype(np.uint8)
    if label.dtype.kind not in "iuf":
        raise InputError(f"{path}: label dtype {label.dtype} is not an integer label map")
    if label.dtype.kind == "f" and not (np.all(np.isfinite(label))
                                        and np.array_equal(label, np.rint(label))):
        raise InputError(f"{path}: label map holds non-integer values")
    lo, hi = label.min(), label.max()
    for dtype in (np.uint8, np.uint16, np.int16):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return label.astype(dtype, copy=False)
    raise InputError(f"{path}: label values {lo}..{hi} do not fit uint16 or int16")


def _atomic_target(final: Path):
    """`segmote.atomic` for a label file: the temporary name ends with the real name
    (`.case.nii.gz.1a2b3c.tmp-case.nii.gz`) so libraries pick the format from it; detached-header
    formats (.nhdr, .mhd) write their two files in a temporary folder, header moved out last."""
    if split_ext(final)[1] in _DETACHED:
        return atomic_sibling_files(final)
    return atomic_path(final, suffix=f".tmp-{final.name}")


# ---------------------------------------------------------------- one writer per format

def _write_png(label: np.ndarray, reference: ImageData, tmp: Path,
               info: LabelInfo) -> None:
    """(H, W) uint8 or uint16 PNG."""
    from PIL import Image

    Image.fromarray(label).save(tmp, format="PNG")


def _write_tiff(label: np.ndarray, reference: ImageData, tmp: Path,
                info: LabelInfo) -> None:
    """(H, W) TIFF, deflate-compressed (tifffile does that without extra codecs)."""
    import tifffile

    tifffile.imwrite(tmp, label, compression="zlib")


def _write_npy(label: np.ndarray, reference: ImageData, tmp: Path,
               info: LabelInfo) -> None:
    with open(tmp, "wb") as f:  # a file object, so numpy does not append another '.npy'
        np.save(f, label)


def _write_npz(label: np.ndarray, reference: ImageData, tmp: Path,
               info: LabelInfo) -> None:
    """Compressed .npz holding the single array ``label`` (so read_image can pick it)."""
    with open(tmp, "wb") as f:
        np.savez_compressed(f, label=label)


_NIFTI_GEOMETRY = ("pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                   "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z")


def _write_nifti(label: np.ndarray, reference: ImageData, tmp: Path,
                 info: LabelInfo) -> None:
    """(X, Y, Z) NIfTI. From a NIfTI input: its header with qform and sform (matrices and codes)
    exactly as in the input; from anything else: the RAS affine as both, code 1 (scanner)."""
    import nibabel as nib

    source = reference.meta.get("header")
    if reference.format == "nifti" and source is not None:
        cls = nib.Nifti2Image if isinstance(source, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(label, source.get_best_affine(), header=source.copy())
        # The constructor may rewrite the sform from the 'best' affine; restore both forms by
        # copying the stored fields (re-deriving the quaternion from a matrix fails in nibabel
        # >= 5.4 when rounding makes its w^2 slightly negative, e.g. -8e-16)
        for key in _NIFTI_GEOMETRY:
            img.header[key] = source[key]
    else:
        affine = np.asarray(reference.meta["affine"], float)
        img = nib.Nifti1Image(label, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    header = img.header
    header.set_data_dtype(label.dtype)
    header.set_slope_inter(1.0, 0.0)  # labels are stored unscaled
    header.set_intent("none")
    header["cal_min"], header["cal_max"] = 0, 0  # the image's display window means nothing here
    img.to_filename(tmp)


def _write_itk(label: np.ndarray, reference: ImageData, tmp: Path, info: LabelInfo) -> None:
    """NRRD / MetaImage via SimpleITK with the reference's ITK geometry (LPS), or the one
    derived from its RAS affine when the input was not read with SimpleITK; a ``.seg.nrrd``
    gets Slicer's segment fields in its header."""
    import SimpleITK as sitk

    meta = reference.meta
    if "origin" in meta and "direction" in meta:
        origin, spacing, direction = meta["origin"], meta["spacing"], meta["direction"]
    else:
        origin, spacing, direction = ras_affine_to_itk(meta["affine"])
    if meta.get("dimension") == 2:  # a 2-D NRRD/MHA was read as (X, Y, 1); write it back 2-D
        image = sitk.GetImageFromArray(np.ascontiguousarray(label[:, :, 0].T))
    else:
        origin, spacing, direction = embed_itk_geometry(origin, spacing, direction)
        image = sitk.GetImageFromArray(np.ascontiguousarray(label.T))  # (z, y, x) for ITK
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in direction))
    if _is_slicer_seg(tmp):
        for key, value in slicer_segment_fields(label, info.table(label)).items():
            image.SetMetaData(key, value)
    sitk.WriteImage(image, str(tmp), useCompression=True)


_WRITERS: dict[str, Callable[[np.ndarray, ImageData, Path, LabelInfo], None]] = {
    "png": _write_png, "tiff": _write_tiff, "npy": _write_npy, "npz": _write_npz,
    "nifti": _write_nifti, "itk": _write_itk, "dicomseg": write_dicom_seg,
}
