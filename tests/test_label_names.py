"""Named labels out: DICOM-SEG (read back with pydicom and highdicom), Slicer .seg.nrrd, and the
ITK-SNAP label description file beside NIfTI / NRRD maps.

The DICOM series is the bundled real CT (lung2 crop, 256 x 256 x 15) written as one file per
slice with its NIfTI geometry, so the series' geometry and the segmentation's frame-to-slice
references are checked against an independent source (nibabel's affine, the ground truth).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from segmote.errors import InputError
from segmote.io import LabelInfo, label_names_path, read_image, write_label
from segmote.io.labels import read_itksnap_labels, read_slicer_segments

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "segmote" / "assets" / "samples"
CT = SAMPLES / "lung2_ct_crop.nii.gz"
GT = SAMPLES / "lung2_ct_crop_label.nii.gz"


def ct_series(folder: Path) -> tuple[nib.Nifti1Image, list[Path]]:
    """Write the bundled CT as a DICOM series (file names against the slice order); return
    the NIfTI and the files in slice order k = 0..Z-1."""
    img = nib.load(CT)
    vol = np.asarray(img.dataobj)  # (X, Y, Z) int16 HU
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # DICOM patient space is LPS
    sx, sy = np.linalg.norm(lps[:3, :2], axis=0)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series, files = generate_uid(), []
    folder.mkdir()
    for k in range(vol.shape[2]):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]  # rows run along j, columns along i
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.ImageOrientationPatient = [*(lps[:3, 0] / sx), *(lps[:3, 1] / sy)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).astype("<i2").tobytes()
        files.append(folder / f"IM{vol.shape[2] - k:03d}.dcm")
        ds.save_as(files[-1])
    return img, files


def test_ct_series_geometry_round_trips(tmp_path):
    img, _ = ct_series(tmp_path / "series")
    ref = read_image(tmp_path / "series")
    np.testing.assert_array_equal(ref.array, np.asarray(img.dataobj))
    np.testing.assert_allclose(ref.meta["affine"], img.affine, atol=1e-4)
    out = write_label(np.asarray(nib.load(GT).dataobj), ref, tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, img.affine, atol=1e-4)


def test_dicom_seg_references_the_series_and_reads_back(tmp_path):
    _, files = ct_series(tmp_path / "series")
    ref = read_image(tmp_path / "series")
    label = np.asarray(nib.load(GT).dataobj).astype(np.uint8) * 3  # tumour as label 3
    label[10:20, 10:20, 4:6] = 7
    out = write_label(label, ref, tmp_path / "seg.dcm", LabelInfo({3: "tumour", 5: "liver"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "series"]  # no temp file
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    # segments 1..N in value order: 3 tumour, 5 liver (named, empty), 7 unnamed
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["tumour", "liver", "label 7"]
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Neoplasm"
    seg = hd.seg.segread(out)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True,
                                               skip_overlap_checks=True)
    back = frames.transpose(2, 1, 0)  # (Z, rows, cols) -> (X, Y, Z)
    expected = np.select([label == 3, label == 7], [1, 3], 0)
    np.testing.assert_array_equal(back, expected)


def test_dicom_seg_on_pydicom_real_ct_series(tmp_path):
    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    ref = read_image(folder)  # 5 real axial CT slices (16 x 16, downsampled by pydicom's authors)
    assert ref.array.shape == (16, 16, 5)
    label = (ref.array > np.percentile(ref.array, 70)).astype(np.uint8)
    out = write_label(label, ref, tmp_path / "ct_seg.dcm", LabelInfo({1: "bright"}, True))
    seg = hd.seg.segread(out)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ref.meta["files"]]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), label)


def test_dicom_seg_needs_a_dicom_input(tmp_path):
    ref = read_image(CT)
    with pytest.raises(InputError, match="not DICOM") as err:
        write_label(np.zeros(ref.shape, np.uint8), ref, tmp_path / "seg.dcm")
    assert str(CT.name) in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_nifti_and_nrrd_get_an_itksnap_label_file(tmp_path):
    ref = read_image(CT)
    label = np.asarray(nib.load(GT).dataobj)
    info = LabelInfo({1: "lung tumour", 2: "left lung"})
    for name in ("seg.nii.gz", "seg.nrrd"):
        out = write_label(label, ref, tmp_path / name, info)
        side = label_names_path(out)
        assert side == tmp_path / "seg_labels.txt"
        assert read_itksnap_labels(side.read_text()) == {1: "lung tumour", 2: "left lung"}
        side.unlink()
    write_label(label, ref, tmp_path / "plain.nii.gz")  # no names: no extra file
    assert not label_names_path(tmp_path / "plain.nii.gz").exists()


def test_slicer_seg_nrrd_carries_segment_names(tmp_path):
    ref = read_image(CT)
    label = np.asarray(nib.load(GT).dataobj)
    out = write_label(label, ref, tmp_path / "case.seg.nrrd", LabelInfo({1: "tumour"}))
    assert sorted(os.listdir(tmp_path)) == ["case.seg.nrrd"]
    image = sitk.ReadImage(str(out))
    fields = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    assert read_slicer_segments(fields) == {1: "tumour"}
    i, j, k = np.nonzero(label)
    extent = f"{i.min()} {i.max()} {j.min()} {j.max()} {k.min()} {k.max()}"
    assert fields["Segment0_Extent"] == extent
    np.testing.assert_array_equal(read_image(out).array, label)
    np.testing.assert_allclose(read_image(out).meta["affine"], ref.meta["affine"], atol=1e-5)


@pytest.mark.parametrize("names", [{0: "background"}, {1: ""}, {2: 'say "hi"'}])
def test_bad_label_names(names):
    with pytest.raises(InputError, match="label_names"):
        LabelInfo(names)


@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_rgb_color.dcm"])
def test_dicom_seg_of_a_single_file(tmp_path, name):
    """One CT slice (a (X, Y, 1) volume) and one colour ultrasound frame (a 2-D image)."""
    path = get_testdata_file(name)
    ref = read_image(path)
    label = np.zeros(ref.shape[:3] if ref.is_volume else ref.shape[:2], np.uint8)
    label[10:40, 20:50] = 1
    out = write_label(label, ref, tmp_path / "seg.dcm", LabelInfo({1: "thing"}))
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    frame = hd.seg.segread(out).get_pixels_by_source_instance([uid], combine_segments=True)[0]
    np.testing.assert_array_equal(frame, label[:, :, 0].T if ref.is_volume else label)


def test_failed_dicom_seg_leaves_nothing(tmp_path):
    _, files = ct_series(tmp_path / "series")
    ref = read_image(tmp_path / "series")
    files[3].write_bytes(b"gone")  # the source changed after it was read
    with pytest.raises(InputError, match=f"{files[3]}: cannot read the source DICOM") as err:
        write_label(np.ones(ref.shape, np.uint8), ref, tmp_path / "seg.dcm")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_empty_prediction_is_still_a_valid_dicom_seg(tmp_path):
    ref = read_image(get_testdata_file("CT_small.dcm"))
    out = write_label(np.zeros(ref.shape, np.uint8), ref, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["label 1"]
    assert not seg.pixel_array.any()


def test_highdicom_is_pinned_and_pulls_no_torch():
    """The DICOM-SEG writer's dependency must not bring a second (CUDA) torch to a CPU install."""
    from importlib.metadata import requires, version

    assert version("highdicom") == "0.28.2"
    names = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for r in requires("highdicom") if "extra ==" not in r}
    assert names and not names & {"torch", "torchvision", "timm"}, names
