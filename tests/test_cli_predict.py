"""`segmote predict` end to end: every input format, geometry preserved, bad input handled."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segmote.cli.main import main
from segmote.io import read_image
from segmote.samples import bundled_sample_path, bundled_samples

LUNG = bundled_sample_path("lung2_ct_crop")
NUCLEI = bundled_sample_path("nuclei")
NUCLEI_BOX = ",".join(map(str, bundled_samples()["nuclei"]["box"]))
# the tumour box of the bundled CT restricted to two slices, to keep the test fast
LUNG_BOX = "83,93,6,173,162,7"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["predict", "-q"] + args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_nifti_volume_round_trip(tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    rc, _, err = run_cli(["-i", str(LUNG), "-o", str(out), "--box", LUNG_BOX], capsys)
    assert rc == 0, err
    ref, seg = nib.load(LUNG), nib.load(out)
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(ref.affine)
    label = np.asarray(seg.dataobj)
    gt = np.asarray(nib.load(bundled_sample_path("lung2_ct_crop_label.nii.gz")).dataobj) > 0
    assert set(np.unique(label)) == {0, 1}
    assert not label[:, :, :6].any() and not label[:, :, 8:].any()  # only the box's k-range
    assert _dice(label[:, :, 6:8] > 0, gt[:, :, 6:8]) > 0.85


def test_png_round_trip_with_overlay(tmp_path, capsys):
    out, ov = tmp_path / "mask.png", tmp_path / "overlay.png"
    rc, _, err = run_cli(["-i", str(NUCLEI), "-o", str(out), "--box", NUCLEI_BOX,
                          "--overlay", str(ov)], capsys)
    assert rc == 0, err
    mask = read_image(out).array
    assert mask.shape == read_image(NUCLEI).array.shape and mask.max() == 1
    from PIL import Image
    assert Image.open(ov).size == (512, 512)


def test_two_boxes_with_labels_make_one_label_map(tmp_path, capsys):
    out = tmp_path / "mask.png"
    rc, _, err = run_cli(["-i", str(NUCLEI), "-o", str(out), "--box", NUCLEI_BOX,
                          "--box", "20,20,60,60", "--label", "3", "--label", "7"], capsys)
    assert rc == 0, err
    assert set(np.unique(read_image(out).array)) <= {0, 3, 7}
    assert 3 in read_image(out).array


def test_nrrd_and_mha_keep_geometry(tmp_path, capsys):
    import SimpleITK as sitk
    img = sitk.ReadImage(str(LUNG))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))  # a non-trivial direction survives too
    for ext in (".nrrd", ".mha"):
        src = tmp_path / f"ct{ext}"
        sitk.WriteImage(img, str(src))
        out = tmp_path / f"seg{ext}"
        rc, _, err = run_cli(["-i", str(src), "-o", str(out), "--box", LUNG_BOX], capsys)
        assert rc == 0, err
        seg = sitk.ReadImage(str(out))
        assert seg.GetSize() == img.GetSize()
        np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(seg.GetDirection(), img.GetDirection(), atol=1e-6)
        assert sitk.GetArrayFromImage(seg).any()


def _dicom_series(folder: Path, n: int = 3) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    folder.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    for i in range(n):
        ds = base.copy()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * i]
        ds.SliceLocation = z + 2.5 * i
        ds.save_as(folder / f"slice{i:03d}.dcm")
    return folder


def test_dicom_series_to_nifti(tmp_path, capsys):
    src = _dicom_series(tmp_path / "series")
    out = tmp_path / "seg.nii.gz"
    rc, _, err = run_cli(["-i", str(src), "-o", str(out), "--box", "30,30,1,100,100,1"], capsys)
    assert rc == 0, err
    ref = read_image(src)
    seg = nib.load(out)
    assert seg.shape == ref.array.shape == (128, 128, 3)
    np.testing.assert_allclose(seg.affine, ref.meta["affine"], atol=1e-4)
    label = np.asarray(seg.dataobj)
    assert label[:, :, 1].any() and not label[:, :, 0].any()


def test_single_dicom_file_and_2d_box(tmp_path, capsys):
    from pydicom.data import get_testdata_file
    out = tmp_path / "seg.nii.gz"
    rc, _, err = run_cli(["-i", get_testdata_file("CT_small.dcm"), "-o", str(out),
                          "--box", "30,30,100,100"], capsys)
    assert rc == 0, err
    assert nib.load(out).shape == (128, 128, 1)


def test_npy_and_npz(tmp_path, capsys):
    img = read_image(NUCLEI).array
    np.save(tmp_path / "img.npy", img)
    np.savez(tmp_path / "img.npz", image=img)
    for name, ext in (("img.npy", ".npy"), ("img.npz", ".npz")):
        out = tmp_path / f"seg{ext}"
        rc, _, err = run_cli(["-i", str(tmp_path / name), "-o", str(out), "--box", NUCLEI_BOX],
                             capsys)
        assert rc == 0, err
        arr = np.load(out)
        arr = arr[arr.files[0]] if ext == ".npz" else arr
        assert arr.shape == img.shape and arr.any()


def test_point_prompt_in_a_volume(tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    rc, _, err = run_cli(["-i", str(LUNG), "-o", str(out), "--box", LUNG_BOX,
                          "--point", "128,128,7,1"], capsys)
    assert rc == 0, err


# -- bad input: one clear line, non-zero exit, no output file, no traceback -----------------

def _bad_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(LUNG.read_bytes()[:2000])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    (tmp_path / "empty_dicom").mkdir()
    bad_ckpt = tmp_path / "bad.pth"
    torch.save({"image_encoder.patch_embed.seq.0.c.weight": torch.zeros(32, 3, 1, 1)}, bad_ckpt)
    return [
        (["-i", str(tmp_path / "missing.nii.gz"), "--box", LUNG_BOX], "missing.nii.gz"),
        (["-i", str(trunc), "--box", LUNG_BOX], "trunc.nii.gz"),
        (["-i", str(junk), "--box", NUCLEI_BOX], "junk.png"),
        (["-i", str(tmp_path / "empty_dicom"), "--box", LUNG_BOX], "empty_dicom"),
        (["-i", str(LUNG), "--box", "83,93,6,999,162,7"], "outside the volume"),
        (["-i", str(LUNG), "--box", "83,93,173,162"], "expected 6 numbers"),
        (["-i", str(NUCLEI), "--box", "10,10,900,20"], "outside the image"),
        (["-i", str(NUCLEI), "--box", "1,2,3"], "expected 4 numbers"),
        (["-i", str(NUCLEI), "--point", "10,10,5"], "label must be"),
        (["-i", str(NUCLEI), "--box", "a,b,c,d"], "comma-separated numbers"),
        (["-i", str(NUCLEI)], "at least one --box"),
        (["-i", str(NUCLEI), "--box", NUCLEI_BOX, "--checkpoint", str(bad_ckpt)],
         "does not fit the model"),
        (["-i", str(NUCLEI), "--box", NUCLEI_BOX, "--backbone", "sam_vit_b"], "--checkpoint"),
        (["-i", str(NUCLEI), "--box", NUCLEI_BOX, "--window", "40"], "LEVEL,WIDTH"),
        (["-i", str(NUCLEI), "--box", NUCLEI_BOX, "--device", "cuda:0"], "CUDA"),
    ]


def test_bad_inputs_fail_cleanly(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.fail("this test expects a machine without CUDA for the --device check")
    for args, needle in _bad_cases(tmp_path):
        out_dir = tmp_path / "out"
        out_dir.mkdir(exist_ok=True)
        rc, _, err = run_cli(args + ["-o", str(out_dir)], capsys)
        lines = err.strip().splitlines()
        assert rc == 1, (args, err)
        assert len(lines) == 1 and needle in lines[0], (args, err)
        assert "Traceback" not in err
        assert list(out_dir.iterdir()) == [], (args, list(out_dir.iterdir()))


def test_real_entry_point_has_no_traceback(tmp_path):
    exe = shutil.which("segmote") or f"{sys.executable} -m segmote.cli.main"
    proc = subprocess.run(exe.split() + ["predict", "-i", str(tmp_path / "nope.png"), "-o",
                          str(tmp_path / "o.png"), "--box", "1,1,5,5"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "nope.png" in proc.stderr
    assert not (tmp_path / "o.png").exists()
