"""Refuse an image before reading it when its header promises more data than the file holds
or than memory allows.

A 67-byte `.nii.gz` can declare 1024^3 int16 voxels; nibabel, SimpleITK, Pillow and numpy would
allocate the whole array (2 GiB) before noticing that the data is missing. Every format's
header is read here without its pixel data, giving the declared size in bytes, which must fit

- the bytes the file can hold: its length after the header for uncompressed data; the gzip
  trailer's uncompressed length (ISIZE) or a zip entry's recorded size where there is one; and
  ``MAX_RATIO`` times the compressed length for deflate, LZW or baseline-JPEG data (deflate
  cannot expand more than 1032:1, LZW about 2730:1, baseline JPEG 512:1);
- the memory budget: half the machine's physical memory unless the caller gives one.

Unparseable headers pass: the reader itself then fails with its own one-line InputError.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from segmote.errors import InputError

MAX_RATIO = 3000  # compressed formats: declared bytes <= MAX_RATIO * bytes on disk


def default_budget() -> int:
    """Half the physical memory in bytes (a reader, preprocessing and the model share the rest)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB of memory
        return 4 << 30


def check_declared_size(path: Path, fmt: str, max_bytes: int | None = None) -> None:
    """InputError if the header of `path` (format `fmt`, see `READ_FORMATS`) declares more pixel
    bytes than the file can hold or than `max_bytes` (default: `default_budget()`)."""
    declared = _DECLARED.get(fmt, lambda p: None)(path)
    if declared is None:
        return
    nbytes, available, what = declared
    _check(path, nbytes, available, what, max_bytes)


def check_series_size(folder: Path, files: list[str], max_bytes: int | None = None) -> None:
    """The same check for the files of one DICOM series, whose slices are read into one array."""
    total = 0
    for name in files:
        declared = _dicom(Path(name))
        if declared is not None:
            _check(Path(name), *declared, max_bytes=None)  # each slice must fit its own file
            total += declared[0]
    _check(folder, total, None, "", max_bytes)


def _check(path: Path, nbytes: int, available: int | None, what: str,
           max_bytes: int | None) -> None:
    if available is not None and nbytes > available:
        raise InputError(f"{path}: header declares {_size(nbytes)} of pixel data but the file "
                         f"holds at most {_size(available)}{what}; the file is truncated or "
                         "its header is wrong")
    budget = default_budget() if max_bytes is None else max_bytes
    if nbytes > budget:
        raise InputError(f"{path}: image of {_size(nbytes)} exceeds the memory budget of "
                         f"{_size(budget)}; crop or downsample it first")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


Declared = tuple[int, int | None, str]  # (declared bytes, bytes the file can hold, why)


# ---------------------------------------------------------------- per format

def _pillow(path: Path) -> Declared | None:
    """PNG / JPEG / BMP (and TIFF when tifffile cannot tell): Pillow opens lazily."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            bands = len(img.getbands())
            bits = 32 if img.mode in ("I", "F") else 16 if img.mode.startswith("I;16") else 8
            fmt = img.format
            raw = fmt == "BMP" and img.info.get("compression", 0) == 0
    except Exception:  # noqa: BLE001 - not an image Pillow knows: the reader says why
        return None
    nbytes = w * h * bands * bits // 8
    size = path.stat().st_size
    if raw:
        return nbytes, size, ""
    return nbytes, MAX_RATIO * size, f" ({MAX_RATIO}x its {size} bytes, compressed)"


def _tiff(path: Path) -> Declared | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            nbytes = int(np.prod(page.shape)) * page.dtype.itemsize * len(tif.pages)
            compressed = int(page.compression) != 1
    except Exception:  # noqa: BLE001 - tifffile cannot parse it: try Pillow's view
        return _pillow(path)
    size = path.stat().st_size
    if not compressed:
        return nbytes, size, ""
    return nbytes, MAX_RATIO * size, f" ({MAX_RATIO}x its {size} bytes, compressed)"


def _npy_header(handle) -> tuple[int, int] | None:
    """(array bytes, header bytes) of an NPY stream, or None if it is not one."""
    try:
        version = np.lib.format.read_magic(handle)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            return None
        shape, _, dtype = reader(handle)
        return int(np.prod(shape, dtype=object)) * dtype.itemsize, handle.tell()
    except Exception:  # noqa: BLE001 - bad header: np.load gives the error
        return None


def _npy(path: Path) -> Declared | None:
    with open(path, "rb") as handle:
        header = _npy_header(handle)
    if header is None:
        return None
    return header[0], path.stat().st_size - header[1], ""


def _npz(path: Path) -> Declared | None:
    """Every `.npy` member: its header against the entry's recorded size and the ratio bound."""
    try:
        archive = zipfile.ZipFile(path)
    except Exception:  # noqa: BLE001 - BadZipFile, truncated directory: np.load says why
        return None
    total = 0
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    header = _npy_header(member)
            except Exception:  # noqa: BLE001 - damaged entry: np.load says why
                continue
            if header is None:
                continue
            nbytes, offset = header
            total += nbytes
            limit = info.file_size - offset
            if info.compress_type != zipfile.ZIP_STORED:
                limit = min(limit, MAX_RATIO * info.compress_size)
            if nbytes > limit:
                return nbytes, max(limit, 0), f" (member {info.filename})"
    return total, None, ""


def _nifti(path: Path) -> Declared | None:
    import nibabel as nib

    try:
        header = nib.load(path).header
        shape = header.get_data_shape()
        nbytes = int(np.prod(shape, dtype=object)) * header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
    except Exception:  # noqa: BLE001 - bad header: the reader says why
        return None
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return nbytes, size - offset, ""
    limit, what = MAX_RATIO * size, f" ({MAX_RATIO}x its {size} compressed bytes)"
    isize = _gzip_isize(path)
    # ISIZE is the length modulo 2^32 of the last gzip member; usable below 4 GiB only
    if isize is not None and offset + nbytes < (1 << 32) and _single_member(path):
        limit, what = isize - offset, " (uncompressed length from the gzip trailer)"
    return nbytes, limit, what


def _gzip_isize(path: Path) -> int | None:
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return None
        handle.seek(0, os.SEEK_END)
        if handle.tell() < 18:
            return 0
        handle.seek(-4, os.SEEK_END)
        return struct.unpack("<I", handle.read(4))[0]


def _single_member(path: Path) -> bool:
    """False for BGZF-style files (gzip blocks with the FEXTRA flag), whose trailer gives the
    length of the last block only."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return len(head) == 4 and not head[3] & 0x04


_HEADER_KEYS = re.compile(r"^\s*([A-Za-z ]+?)\s*[:=]=?\s*(.*?)\s*$")


def _text_header(path: Path) -> dict[str, str]:
    """Keys (lower case) of an NRRD or MetaImage text header; reads at most 64 KiB."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    keys: dict[str, str] = {}
    for line in head.split(b"\n"):
        if not line.strip():
            break  # NRRD: a blank line ends the header
        match = _HEADER_KEYS.match(line.decode("latin-1"))
        if match:
            keys[match.group(1).lower()] = match.group(2)
        if line.lower().startswith(b"elementdatafile"):
            break  # MetaImage: the last header line
    return keys


def _itk(path: Path) -> Declared | None:
    """NRRD / MetaImage: size and pixel type from SimpleITK, data location from the header."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    item = int(bits.group(1)) // 8 if bits else 8
    nbytes = int(np.prod(reader.GetSize(), dtype=object)) * item * \
        reader.GetNumberOfComponents()
    keys = _text_header(path)
    data_name = keys.get("data file") or keys.get("datafile") or keys.get("elementdatafile")
    data = path if data_name in (None, "LOCAL") else path.parent / data_name
    if not data.is_file():  # LIST / pattern data files: only the budget applies
        return nbytes, None, ""
    size = data.stat().st_size
    encoding = keys.get("encoding", "raw").lower()
    compressed = keys.get("compresseddata", "false").lower() == "true" or encoding != "raw"
    if not compressed:
        return nbytes, size, ""
    if encoding in ("bzip2", "bz2"):
        return nbytes, None, ""  # bzip2 has no useful expansion bound
    return nbytes, MAX_RATIO * size, f" ({MAX_RATIO}x its {size} compressed bytes)"


_UNCOMPRESSED_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _dicom(path: Path) -> Declared | None:
    """Rows x Columns x frames x samples x BitsAllocated from the header (no pixel data)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        nbytes = (int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
                  * int(getattr(ds, "SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8)
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - no header, or not an image: the reader says why
        return None
    size = path.stat().st_size
    if syntax in _UNCOMPRESSED_SYNTAXES:
        return nbytes, size, ""
    return nbytes, None, ""  # JPEG 2000 / RLE / JPEG-LS: the budget only


_DECLARED = {"png": _pillow, "jpg": _pillow, "bmp": _pillow, "tiff": _tiff, "npy": _npy,
             "npz": _npz, "nifti": _nifti, "nrrd": _itk, "mha": _itk, "dicom": _dicom}
