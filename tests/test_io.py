"""segmote.io: every reader on real data, label round trips with identical geometry, one-line
errors naming the file, and atomic writes that leave nothing behind when they fail."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from nibabel.testing import data_path
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from segmote.errors import InputError
from segmote.io import ImageData, output_path_for, read_image, write_label

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


# ---------------------------------------------------------------------------- 2-D images

def test_png_round_trip_on_real_slice(tmp_path):
    slice_u8 = (anat_data()[:, :, 12].astype(float) / anat_data().max() * 255).astype(np.uint8)
    Image.fromarray(slice_u8).save(tmp_path / "slice.png")
    img = read_image(tmp_path / "slice.png")
    assert (img.is_volume, img.format, img.spacing, img.modality) == (False, "png", (1.0, 1.0), None)
    np.testing.assert_array_equal(img.array, slice_u8)
    label = (slice_u8 > 60).astype(np.uint8) * 3
    out = write_label(label, img, tmp_path / "out")  # a name without ending is a folder
    assert out == tmp_path / "out" / "slice_seg.png"
    back = read_image(out)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, label)


def test_16bit_png_and_rgb_jpeg(tmp_path):
    ct = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.uint16)  # real 12-bit CT pixels
    Image.fromarray(ct).save(tmp_path / "ct16.png")
    img = read_image(tmp_path / "ct16.png")
    assert img.array.dtype == np.uint16 and img.array.max() > 255
    np.testing.assert_array_equal(img.array, ct)
    rgb = np.stack([(ct >> s).astype(np.uint8) for s in (0, 3, 4)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "photo.jpeg", quality=95)
    img = read_image(tmp_path / "photo.jpeg")
    assert img.array.shape == (128, 128, 3) and img.format == "jpg" and not img.is_volume
    out = write_label(np.ones((128, 128), np.uint8), img, tmp_path)
    assert out.name == "photo_seg.png" and read_image(out).array.shape == (128, 128)


def test_tiff_keeps_16bit_rgb_float_and_writes_uint16_labels(tmp_path):
    ct = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.uint16)
    rgb16 = np.stack([ct, ct // 2, ct // 3], axis=-1)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16)  # Pillow alone would give 8-bit RGB
    img = read_image(tmp_path / "rgb16.tif")
    assert img.array.dtype == np.uint16 and img.format == "tiff"
    np.testing.assert_array_equal(img.array, rgb16)
    tifffile.imwrite(tmp_path / "f.tiff", ct.astype(np.float32) / 7)
    assert read_image(tmp_path / "f.tiff").array.dtype == np.float32
    instances = (ct.astype(np.int64) * 300 // ct.max()).astype(np.int64)  # labels up to 300
    out = write_label(instances, img, tmp_path / "inst.tif")
    back = read_image(out)
    assert back.array.dtype == np.uint16 and back.array.max() == 300
    np.testing.assert_array_equal(back.array, instances)


def test_lzw_tiff_falls_back_to_pillow(tmp_path):
    slice_u8 = (anat_data()[:, :, 12] // 8).astype(np.uint8)
    Image.fromarray(slice_u8).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif").array, slice_u8)


def test_multipage_tiff_is_refused(tmp_path):
    stack = anat_data()[:, :, :4].transpose(2, 0, 1)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "stack.tif")
    assert_input_error(err, "stack.tif")


# ---------------------------------------------------------------------------- numpy

def test_npy_image_rgb_and_volume(tmp_path):
    vol = anat_data()
    np.save(tmp_path / "vol.npy", vol)
    np.save(tmp_path / "img.npy", vol[:, :, 3])
    np.save(tmp_path / "rgb.npy", np.stack([vol[:, :, 3]] * 3, axis=-1))
    img = read_image(tmp_path / "vol.npy")
    assert img.is_volume and img.spacing == (1.0, 1.0, 1.0) and img.array.dtype == np.int16
    assert not read_image(tmp_path / "img.npy").is_volume
    rgb = read_image(tmp_path / "rgb.npy")
    assert not rgb.is_volume and rgb.array.shape == (33, 41, 3)
    label = (vol > 100).astype(np.uint8)
    out = write_label(label, img, str(tmp_path / "seg") + "/")
    assert out == tmp_path / "seg" / "vol_seg.npy"
    np.testing.assert_array_equal(np.load(out), label)


def test_npz_image_key_spacing_single_and_ambiguous(tmp_path):
    vol = anat_data()
    np.savez(tmp_path / "a.npz", image=vol, spacing=np.array([0.5, 0.6, 2.0]), other=vol)
    img = read_image(tmp_path / "a.npz")
    assert img.spacing == (0.5, 0.6, 2.0)
    np.testing.assert_array_equal(img.array, vol)
    out = write_label(vol > 0, img, tmp_path)
    assert out.name == "a_seg.npz"
    np.testing.assert_array_equal(read_image(out).array, (vol > 0).astype(np.uint8))
    np.savez(tmp_path / "single.npz", whatever=vol[:, :, 0])
    assert read_image(tmp_path / "single.npz").array.shape == (33, 41)
    np.savez(tmp_path / "two.npz", imgs=vol, gts=vol)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "two.npz")
    assert_input_error(err, "two.npz")


# ---------------------------------------------------------------------------- NIfTI

def test_nifti_round_trip_keeps_affine_forms_dtype_and_axis_order(tmp_path):
    img = read_image(ANAT)
    source = nib.load(ANAT)
    assert img.array.dtype == np.int16 and img.array.dtype.isnative  # file is big-endian '>i2'
    np.testing.assert_array_equal(img.array, np.asarray(source.dataobj))  # nibabel (i, j, k)
    assert img.spacing == (2.0, 2.0, 2.0)
    label = np.zeros(img.array.shape, np.uint8)
    label[img.array > np.percentile(img.array, 70)] = 2
    label[:3, :4, :5] = 1  # a corner block: catches flipped or transposed axes
    out = write_label(label, img, tmp_path)
    assert out.name == "anatomical_seg.nii.gz"
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-5)
    for form in ("qform", "sform"):
        matrix, code = getattr(back, f"get_{form}")(coded=True)
        expected, expected_code = getattr(source, f"get_{form}")(coded=True)
        assert code == expected_code
        np.testing.assert_allclose(matrix, expected, atol=1e-5)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), label)
    reread = read_image(out)
    np.testing.assert_allclose(reread.meta["affine"], img.meta["affine"], atol=1e-5)


def test_nifti_qform_0_sform_2_and_uint16_labels(tmp_path):
    img = read_image(NIB / "standard.nii.gz")  # qform_code 0, sform_code 2, zooms (1, 3, 2)
    assert img.spacing == (1.0, 3.0, 2.0) and img.array.dtype == np.uint8
    label = (np.arange(img.array.size) * 2 + 20).reshape(img.array.shape)  # 20..298: uint16
    back = nib.load(write_label(label, img, tmp_path / "lab.nii"))
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (0, 2)
    np.testing.assert_allclose(back.affine, nib.load(NIB / "standard.nii.gz").affine, atol=1e-5)
    assert back.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(back.dataobj), label)


def test_nifti2_round_trip_stays_nifti2(tmp_path):
    src = nib.load(NIB / "example_nifti2.nii.gz")  # 4-D; take its first real volume
    vol = np.asarray(src.dataobj)[..., 0]
    nib.save(nib.Nifti2Image(vol, src.affine), tmp_path / "n2.nii.gz")
    img = read_image(tmp_path / "n2.nii.gz")
    back = nib.load(write_label(vol > vol.mean(), img, tmp_path / "o.nii.gz"))
    assert isinstance(back, nib.Nifti2Image)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz"])
def test_4d_nifti_is_refused(name):
    with pytest.raises(InputError, match="4-D") as err:
        read_image(NIB / name)
    assert_input_error(err, name)


def test_nifti_2d_and_singleton_4th_dim_are_volumes(tmp_path):
    source = nib.load(ANAT)
    vol = anat_data()
    nib.save(nib.Nifti1Image(vol[..., None], source.affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(vol[:, :, 7], source.affine), tmp_path / "flat.nii.gz")
    img = read_image(tmp_path / "t1.nii.gz")
    assert img.array.shape == vol.shape
    flat = read_image(tmp_path / "flat.nii.gz")
    assert flat.is_volume and flat.array.shape == (33, 41, 1)
    np.testing.assert_array_equal(flat.array[:, :, 0], vol[:, :, 7])
    back = nib.load(write_label(flat.array > 50, flat, tmp_path / "flat_seg.nii.gz"))
    assert back.shape[:2] == (33, 41)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-5)


def test_nifti_to_nrrd_carries_the_affine(tmp_path):
    img = read_image(ANAT)
    back = read_image(write_label(img.array > 0, img, tmp_path / "cross.nrrd"))
    np.testing.assert_allclose(back.meta["affine"], img.meta["affine"], atol=1e-5)


# ---------------------------------------------------------------------------- NRRD / MHA

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


@pytest.mark.parametrize("ext, out_ext", [(".nrrd", ".nrrd"), (".mha", ".mha"),
                                          (".nhdr", ".nhdr"), (".mhd", ".mhd")])
def test_itk_round_trip_keeps_origin_spacing_direction(tmp_path, ext, out_ext):
    crop, image = make_itk_volume(tmp_path / f"vol{ext}")
    img = read_image(tmp_path / f"vol{ext}")
    assert img.format == ("nrrd" if ext in (".nrrd", ".nhdr") else "mha")
    assert img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array, crop)  # same axis order as nibabel indexing
    np.testing.assert_allclose(img.spacing, (0.7, 1.3, 2.9))
    ijk = (5, 7, 3)
    lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
    np.testing.assert_allclose((img.meta["affine"] @ [*ijk, 1])[:3], lps * [-1, -1, 1], atol=1e-6)
    label = (crop > crop.mean()).astype(np.uint8)
    target = tmp_path / "out" if out_ext == ext and ext in (".nrrd", ".mha") else tmp_path / f"lab{out_ext}"
    out = write_label(label, img, target)
    assert out.name.endswith(out_ext)
    back = read_image(out)
    for key in ("origin", "spacing", "direction"):
        np.testing.assert_allclose(back.meta[key], getattr(image, f"Get{key.title()}")(), atol=1e-6)
    np.testing.assert_array_equal(back.array, label)
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_2d_mha_reads_as_single_slice_volume_and_writes_back_2d(tmp_path):
    image = sitk.GetImageFromArray(np.ascontiguousarray(anat_data()[:, :, 9].T))
    image.SetSpacing((0.5, 0.8))
    image.SetOrigin((3.0, -4.0))
    sitk.WriteImage(image, str(tmp_path / "slice.mha"))
    img = read_image(tmp_path / "slice.mha")
    assert img.is_volume and img.array.shape == (33, 41, 1) and img.spacing == (0.5, 0.8, 1.0)
    back = sitk.ReadImage(str(write_label(img.array > 30, img, tmp_path)))
    assert back.GetDimension() == 2 and back.GetSpacing() == (0.5, 0.8)
    assert back.GetOrigin() == (3.0, -4.0)


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


def test_several_series_reads_the_largest_and_warns(tmp_path):
    write_series(tmp_path / "mixed", 3)
    write_series(tmp_path / "mixed", 1, start=10)  # another series UID, one file
    with pytest.warns(UserWarning, match="2 DICOM series"):
        img = read_image(tmp_path / "mixed")
    assert img.array.shape == (128, 128, 3)


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
