"""Damaged copies of real files in every format the readers take: truncated, zero-length,
wrong magic bytes and a header that declares far more pixels than the file holds.

`make_bad_files(folder)` writes them all and returns {(format, defect): path}; run as a script
(`python tests/bad_files.py FILE...`) it reads each file in this fresh process and prints one
JSON line per file plus the process's peak resident memory, so a test can bound it.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

DEFECTS = ("truncated", "zero-length", "wrong-magic", "lying-header")
# (format name, file name): one valid source file per reader and encoding
FORMATS = (("png", "x.png"), ("jpg", "x.jpg"), ("bmp", "x.bmp"), ("tiff", "x.tif"),
           ("npy", "x.npy"), ("npz", "x.npz"), ("nifti", "x.nii"), ("nifti-gz", "x.nii.gz"),
           ("nrrd", "x.nrrd"), ("nrrd-gz", "x.nrrd"), ("mha", "x.mha"), ("dicom", "x.dcm"))
# where each format's magic bytes are (DICOM: "DICM" after the 128-byte preamble; NIfTI-1:
# "n+1" at byte 344)
_MAGIC_AT = {"dicom": 128, "nifti": 344}


def _real_2d() -> np.ndarray:
    from segmote.io import read_image
    from segmote.samples import bundled_sample_path

    grey = np.asarray(read_image(bundled_sample_path("nuclei")).array)[:64, :64]
    return np.stack([grey] * 3, axis=-1) if grey.ndim == 2 else grey[..., :3]  # RGB


def _real_volume() -> np.ndarray:
    from segmote.io import read_image
    from segmote.samples import bundled_sample_path

    return np.asarray(read_image(bundled_sample_path("lung2_ct_crop")).array)[:24, :24, :6]


def _valid(fmt: str, path: Path) -> None:
    """A small valid file of `fmt` made from the bundled real samples (or pydicom's CT)."""
    import nibabel as nib
    import SimpleITK as sitk
    from PIL import Image

    if fmt in ("png", "jpg", "bmp"):
        Image.fromarray(_real_2d()).save(path)
    elif fmt == "tiff":
        import tifffile
        tifffile.imwrite(path, _real_2d())
    elif fmt == "npy":
        np.save(path, _real_volume())
    elif fmt == "npz":
        np.savez_compressed(path, image=_real_volume())
    elif fmt.startswith("nifti"):
        nib.save(nib.Nifti1Image(_real_volume(), np.eye(4)), path)
    elif fmt.startswith("nrrd") or fmt == "mha":
        image = sitk.GetImageFromArray(_real_volume().T.copy())
        sitk.WriteImage(image, str(path), useCompression=fmt == "nrrd-gz")
    elif fmt == "dicom":
        from pydicom.data import get_testdata_file
        path.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    else:
        raise ValueError(fmt)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _lie(fmt: str, data: bytes) -> bytes:
    """The same file with a header declaring a large image (allocations of 0.4 .. 16 GiB)."""
    big = 12000  # 2-D: 12000^2 RGB = 432 MB, under Pillow's decompression-bomb limit
    if fmt == "png":
        ihdr = data[16:29]
        return data[:8] + _png_chunk(b"IHDR", struct.pack(">II", big, big) + ihdr[8:]) + data[33:]
    if fmt == "jpg":
        at = data.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), height, width
        return data[:at] + struct.pack(">HH", big, big) + data[at + 4:]
    if fmt == "bmp":
        return data[:18] + struct.pack("<ii", big, big) + data[26:]
    if fmt == "tiff":
        import tifffile
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            tags = tif.pages[0].tags
            spots = [(tags[n].valueoffset, tags[n].dtype) for n in ("ImageWidth", "ImageLength")]
        out = bytearray(data)
        for offset, dtype in spots:
            code = "<H" if int(dtype) == 3 else "<I"
            out[offset:offset + struct.calcsize(code)] = struct.pack(code, big)
        return bytes(out)
    if fmt in ("npy", "npz"):
        buf = io.BytesIO()
        header = {"descr": "<i2", "fortran_order": False, "shape": (1024, 1024, 1024)}
        np.lib.format.write_array_header_1_0(buf, header)
        npy = buf.getvalue() + b"\0" * 64
        if fmt == "npy":
            return npy
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("image.npy", npy)
        return buf.getvalue()
    if fmt.startswith("nifti"):
        raw = gzip.decompress(data) if fmt == "nifti-gz" else data
        raw = raw[:40] + struct.pack("<8h", 3, 1024, 1024, 1024, 1, 1, 1, 1) + raw[56:]
        return gzip.compress(raw) if fmt == "nifti-gz" else raw
    if fmt.startswith("nrrd") or fmt == "mha":
        key = rb"(sizes: |DimSize = )[0-9 ]+"
        return re.sub(key, lambda m: m.group(1) + b"1024 1024 1024", data, count=1)
    if fmt == "dicom":
        import pydicom
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.Rows, ds.Columns, ds.NumberOfFrames = 4096, 4096, 64  # 2 GiB of int16
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()
    raise ValueError(fmt)


def make_bad_files(folder: Path) -> dict[tuple[str, str], Path]:
    """Every (format, defect) file, written under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for fmt, name in FORMATS:
        source = folder / f"valid-{fmt}-{name}"
        _valid(fmt, source)
        data = source.read_bytes()
        at = _MAGIC_AT.get(fmt, 0)
        variants = {"truncated": data[: len(data) // 2], "zero-length": b"",
                    "wrong-magic": data[:at] + b"NOT-AN-IMAGE" + data[at + 12:],
                    "lying-header": _lie(fmt, data)}
        for defect, content in variants.items():
            path = folder / f"{defect}-{fmt}-{name}"
            path.write_bytes(content)
            files[(fmt, defect)] = path
    return files


def _read_all(paths: list[str]) -> None:
    """Child process: read each file, print its outcome, then the peak RSS in MB."""
    import warnings

    from segmote.errors import InputError
    from segmote.io import read_image

    warnings.simplefilter("ignore")
    for name in paths:
        try:
            read_image(name)
            outcome, message = "read", ""
        except InputError as err:
            outcome, message = "InputError", str(err)
        except Exception as err:  # noqa: BLE001 - reported, the test fails on it
            outcome, message = type(err).__name__, str(err)[:300]
        print(json.dumps({"path": name, "outcome": outcome, "message": message}), flush=True)
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork + exec, so a child
    # of a pytest process holding a loaded model reported the parent's 2 GB as its own peak.
    status = Path("/proc/self/status").read_text().splitlines()
    peak_mb = int(next(s for s in status if s.startswith("VmHWM:")).split()[1]) / 1024  # kB
    print(json.dumps({"peak_rss_mb": peak_mb}), flush=True)


if __name__ == "__main__":
    _read_all(sys.argv[1:])
