"""DICOM Segmentation (DICOM-SEG) output with highdicom: one segment per label, each frame
referencing the source slice it was predicted on, so a PACS or viewer shows it on that series.

The label map's values become segments 1..N in increasing order of value (BINARY segmentation
storage numbers its segments from 1 without gaps); each segment's label is the label's name
(:class:`segmote.io.labels.LabelInfo`). Coded categories are generic (a tumour-like name gets
"Morphologically Altered Structure / Neoplasm", anything else "Anatomical Structure"): the
segment label carries the meaning. Only the source headers are read (no pixel data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segmote.errors import InputError
from segmote.io.image import ImageData, short_reason
from segmote.io.labels import LabelInfo

# SNOMED CT codes (the ones DICOM's CID 7150 / 7151 offer for these meanings)
_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_ALTERED = ("49755003", "SCT", "Morphologically Altered Structure")
_NEOPLASM = ("108369006", "SCT", "Neoplasm")
_TUMOUR_WORDS = ("tumour", "tumor", "nodule", "lesion", "neoplasm", "cancer", "metasta", "mass")


def check_dicom_source(reference: ImageData, path: Path) -> None:
    """InputError unless ``reference`` was read from DICOM files a segmentation can point to."""
    if reference.format != "dicom" or not reference.meta.get("files"):
        raise InputError(f"{path}: a DICOM Segmentation references its source DICOM series, but "
                         f"{reference.path.name} is not DICOM; write .nii.gz or .nrrd instead")


def write_dicom_seg(label: np.ndarray, reference: ImageData, tmp: Path, info: LabelInfo) -> None:
    """Write ``label`` as a BINARY DICOM Segmentation of the series ``reference`` came from.

    label: (X, Y, Z) on the grid of a DICOM volume (slice k from ``meta["files"][k]``, or
        frame k of a single multi-frame file), or (H, W) for a single-frame colour image.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import segmote

    sources = [_source_header(Path(f)) for f in reference.meta["files"]]
    frames = _frames(label, reference, len(sources))
    table = info.table(label)
    segments = np.zeros(frames.shape, np.uint16 if len(table) > 255 else np.uint8)
    for number, value in enumerate(table, start=1):
        segments[frames == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        "segmote", codes.cid7162.ArtificialIntelligence, segmote.__version__)
    descriptions = [
        hd.seg.SegmentDescription(number, name[:64], *_codes(name),
                                  "AUTOMATIC" if info.automatic else "SEMIAUTOMATIC", algorithm)
        for number, name in enumerate(table.values(), start=1)]
    if not descriptions:  # an empty prediction still gets one (empty) segment to reference
        descriptions = [hd.seg.SegmentDescription(1, "label 1", *_codes(""), "SEMIAUTOMATIC",
                                                  algorithm)]
    try:
        seg = _segmentation(sources, segments, descriptions)
    except (ValueError, TypeError, AttributeError, KeyError) as err:  # headers highdicom rejects
        raise InputError(f"{reference.path}: cannot make a DICOM Segmentation of this input "
                         f"({short_reason(err)})") from None
    seg.save_as(tmp)


def _segmentation(sources: list, segments: np.ndarray, descriptions: list):
    """The highdicom Segmentation object (a new series) for (frames, rows, cols) segments."""
    import highdicom as hd

    import segmote

    return hd.seg.Segmentation(
        source_images=sources, pixel_array=segments, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=300,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="segmote",
        manufacturer_model_name="segmote", software_versions=segmote.__version__,
        device_serial_number="0", series_description="segmote segmentation",
        omit_empty_frames=bool(segments.any()))


def _source_header(path: Path):
    """A source file's header (no pixel data), or InputError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the source DICOM file ({short_reason(err)})") \
            from None


def _frames(label: np.ndarray, reference: ImageData, n_files: int) -> np.ndarray:
    """(frames, rows, cols) in the order of the source files (or of one file's frames)."""
    if label.ndim == 2:
        return label[None]
    frames = np.ascontiguousarray(label.transpose(2, 1, 0))  # (X, Y, Z) -> (Z, rows=Y, cols=X)
    if n_files not in (1, frames.shape[0]):
        raise InputError(f"{reference.path}: {frames.shape[0]} slices but {n_files} DICOM files; "
                         "cannot tell which file each slice came from")
    return frames


def _codes(name: str):
    """(category, type) coded concepts for a segment name."""
    from pydicom.sr.coding import Code

    if any(word in name.lower() for word in _TUMOUR_WORDS):
        return Code(*_ALTERED), Code(*_NEOPLASM)
    return Code(*_ANATOMY), Code(*_ANATOMY)
