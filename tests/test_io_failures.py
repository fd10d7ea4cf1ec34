"""segmote.io under bad input: one-line errors naming the file, refused outputs, and atomic writes
that leave the old file and no temporary behind when they fail."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from segmote.errors import InputError
from segmote.io import ImageData, output_path_for, read_image, write_label
from io_helpers import ANAT, CT_SMALL, NIB, assert_input_error, make_itk_volume


# ---------------------------------------------------------------------------- bad input

def _truncate(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


@pytest.mark.parametrize("make", [
    lambda d: d / "missing.nii.gz",
    lambda d: (d / "image.xyz").write_bytes(b"123") and d / "image.xyz",
    lambda d: _truncate(NIB / "example4d.nii.gz", d / "cut.nii.gz"),
    lambda d: _truncate(ANAT, d / "cut.nii"),
    lambda d: (d / "junk.nii").write_text("garbage") and d / "junk.nii",
    lambda d: _truncate(CT_SMALL, d / "cut.dcm"),
    lambda d: (d / "junk.nrrd").write_text("NRRD0004\nbroken") and d / "junk.nrrd",
    lambda d: (d / "junk.mha").write_text("garbage") and d / "junk.mha",
    lambda d: (d / "junk.npy").write_bytes(b"\x93NUMPY\x01") and d / "junk.npy",
    lambda d: (d / "junk.npz").write_bytes(b"PK\x03\x04") and d / "junk.npz",
    lambda d: (d / "junk.tif").write_bytes(b"II*\x00garbage") and d / "junk.tif",
], ids=["missing", "unknown-ext", "cut-nii-gz", "cut-nii", "junk-nii", "cut-dcm", "junk-nrrd",
        "junk-mha", "junk-npy", "junk-npz", "junk-tif"])
def test_bad_files_raise_one_line_input_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert_input_error(err, path.name)


def test_truncated_png(tmp_path):
    ct = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.uint16)
    Image.fromarray(ct).save(tmp_path / "full.png")
    path = _truncate(tmp_path / "full.png", tmp_path / "cut.png")
    with pytest.raises(InputError) as err:
        read_image(path)
    assert_input_error(err, "cut.png")


def test_bad_labels_and_outputs(tmp_path):
    vol = read_image(ANAT)
    with pytest.raises(InputError, match="label shape") as err:
        write_label(np.zeros((33, 41, 24), np.uint8), vol, tmp_path / "x.nii.gz")
    assert_input_error(err, "x.nii.gz")
    with pytest.raises(InputError, match="3-D") as err:
        write_label(np.zeros(vol.array.shape, np.uint8), vol, tmp_path / "x.png")
    assert_input_error(err, "x.png")
    with pytest.raises(InputError, match="non-integer"):
        write_label(np.full(vol.array.shape, 0.5), vol, tmp_path / "x.nii.gz")
    with pytest.raises(InputError) as err:
        write_label(np.zeros(vol.array.shape, np.uint8), vol, tmp_path / "x.jpg")  # lossy
    assert_input_error(err, "x.jpg")
    with pytest.raises(InputError, match="overwrite"):
        write_label(np.zeros(vol.array.shape, np.uint8), vol, ANAT)
    flat = ImageData(np.zeros((5, 6, 3), np.uint8), False, (1.0, 1.0), "png", tmp_path / "p.png")
    with pytest.raises(InputError, match="2-D"):
        write_label(np.zeros((5, 6), np.uint8), flat, tmp_path / "p.nii.gz")
    with pytest.raises(InputError, match="negative"):
        write_label(np.full((5, 6), -1), flat, tmp_path / "neg.png")
    assert list(tmp_path.iterdir()) == []  # nothing written by any of these


def test_output_path_for_rules(tmp_path):
    vol = read_image(ANAT)
    assert output_path_for(vol, tmp_path) == tmp_path / "anatomical_seg.nii.gz"
    assert output_path_for(vol, f"{tmp_path}/new/") == tmp_path / "new" / "anatomical_seg.nii.gz"
    assert output_path_for(vol, tmp_path / "a.nii") == tmp_path / "a.nii"
    assert output_path_for(vol, tmp_path / "a.NRRD") == tmp_path / "a.NRRD"
    with pytest.raises(InputError):
        output_path_for(vol, tmp_path / "a.tif")
    assert not (tmp_path / "new").exists()  # computing a path creates nothing


# ---------------------------------------------------------------------------- atomic writes

def _fail_after_partial_write(exc: BaseException):
    """A stand-in for a library save that writes half a file and then fails."""
    def save(*args, **kwargs):
        target = next(str(a) for a in args if isinstance(a, (str, os.PathLike)) and ".tmp-" in str(a))
        Path(target).write_bytes(b"half a file")
        raise exc
    return save


def test_failed_nifti_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    img = read_image(ANAT)
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"previous result")
    monkeypatch.setattr(nib.Nifti1Image, "to_filename",
                        lambda self, name: _fail_after_partial_write(OSError("No space left"))(name))
    with pytest.raises(InputError, match="No space left") as err:
        write_label(img.array > 0, img, out)
    assert_input_error(err, "seg.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]
    assert out.read_bytes() == b"previous result"


@pytest.mark.parametrize("ext", [".nrrd", ".mhd"])
def test_failed_itk_write_leaves_nothing(tmp_path, monkeypatch, ext):
    make_itk_volume(tmp_path / "vol.mha")
    img = read_image(tmp_path / "vol.mha")
    monkeypatch.setattr(sitk, "WriteImage", _fail_after_partial_write(RuntimeError("ITK ERROR: x")))
    with pytest.raises(InputError):
        write_label(img.array > 0, img, tmp_path / "out" / f"seg{ext}")
    assert list((tmp_path / "out").iterdir()) == []


def test_interrupted_png_write_leaves_nothing(tmp_path, monkeypatch):
    img = ImageData(np.zeros((8, 9), np.uint8), False, (1.0, 1.0), "png", tmp_path / "in.png")
    monkeypatch.setattr(Image.Image, "save",
                        lambda self, fp, **kw: _fail_after_partial_write(KeyboardInterrupt())(fp))
    with pytest.raises(KeyboardInterrupt):
        write_label(np.ones((8, 9), np.uint8), img, tmp_path / "o.png")
    assert list(tmp_path.iterdir()) == []
