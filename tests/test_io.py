"""segmote.io on real data: 2-D images, numpy, NIfTI, NRRD / MHA; label round trips with
identical geometry. DICOM: test_io_dicom.py; bad input and atomic writes: test_io_failures.py."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from segmote.errors import InputError
from segmote.io import read_image, write_label
from io_helpers import ANAT, CT_SMALL, NIB, anat_data, assert_input_error, make_itk_volume


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
