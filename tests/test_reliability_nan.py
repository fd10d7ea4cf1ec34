"""NaN / Inf voxels (issue 21, case 4): replaced by the finite minimum before anything reads the
image, with one warning; never foreground; the modality guess and the masks of the finite
voxels are what they would be without them. Real weights, the bundled lung CT and nuclei."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from segmote.predict.pipeline import PredictOptions, predict_file
from segmote.predict.prompts import PromptNumbers
from segmote.predict.volume import guess_modality
from segmote.io import read_image
from segmote.io.finite import finite_image
from segmote.samples import bundled_sample_path

# the tumour of the bundled lung crop, slices 6..8 (README's box)
BOX = PromptNumbers(boxes=((83, 93, 6, 173, 162, 8),))
SOFT = PredictOptions(window="soft_tissue", adapter=None)
BASE = PredictOptions(adapter=None)


def _float_ct(path, patch: float | None):
    """The bundled CT as float32 NIfTI, with `patch` written into 16 x 16 voxels of slice 7
    that lie in the lung (below -160 HU, clipped alike by the soft-tissue window)."""
    src = nib.load(bundled_sample_path("lung2_ct_crop"))
    array = np.asarray(src.dataobj).astype(np.float32)
    if patch is not None:
        array[182:198, 65:81, 7] = patch
    nib.save(nib.Nifti1Image(array, src.affine), path)
    return path


def test_nan_patch_changes_no_mask_of_the_finite_voxels(tmp_path):
    clean = predict_file(_float_ct(tmp_path / "clean.nii.gz", None), tmp_path / "a.nii.gz",
                         BOX, SOFT)
    src = _float_ct(tmp_path / "nan.nii.gz", np.nan)
    before = src.read_bytes()
    with pytest.warns(UserWarning, match=r"nan.nii.gz: 256 of 983040 values are NaN or Inf; "
                                         r"replaced by the image's finite minimum -1024"):
        got = predict_file(src, tmp_path / "b.nii.gz", BOX, SOFT)
    assert "modality CT" in got.summary  # HU still recognised: the guess saw finite values
    np.testing.assert_array_equal(got.label, clean.label)
    assert src.read_bytes() == before
    assert 0 < np.count_nonzero(clean.label) < 0.05 * clean.label.size


def test_modality_guess_and_statistics_ignore_non_finite_values():
    ct = read_image(bundled_sample_path("lung2_ct_crop"))
    poisoned = ct.array.astype(np.float32)
    poisoned[0, 0, :3] = (np.nan, np.inf, -np.inf)
    data = dataclasses.replace(ct, array=poisoned)
    assert guess_modality(data) is None  # what NaN did to the guess before the fix
    with pytest.warns(UserWarning, match="3 of 983040 values are NaN or Inf"):
        fixed = finite_image(data)
    assert guess_modality(fixed) == "CT" and fixed.meta["non_finite"] == 3
    assert (fixed.array[0, 0, :3] == -1024).all()
    assert np.isfinite(fixed.array).all() and fixed.array.min() == ct.array.min()
    assert np.isnan(poisoned[0, 0, 0])  # the caller's array is left alone


def test_nan_patch_in_a_2d_image_stays_background(tmp_path):
    from PIL import Image

    grey = np.asarray(Image.open(bundled_sample_path("nuclei")), np.float32)
    np.save(tmp_path / "clean.npy", grey)
    grey[:40, :40] = np.nan  # far from the box
    np.save(tmp_path / "nan.npy", grey)
    box = PromptNumbers(boxes=((416, 350, 446, 374),))
    clean = predict_file(tmp_path / "clean.npy", tmp_path / "a.png", box, BASE)
    with pytest.warns(UserWarning, match="1600 of 262144 values"):
        got = predict_file(tmp_path / "nan.npy", tmp_path / "b.png", box, BASE)
    assert not got.label[:40, :40].any()  # before the fix: every pixel was foreground
    inter = np.count_nonzero(got.label & clean.label)
    assert 2 * inter / (np.count_nonzero(got.label) + np.count_nonzero(clean.label)) > 0.85


def _float_mr(path, patch: bool):
    """Three axial slices (89..91) of the Colin27 brain MR as float32 NIfTI. One voxel of
    slice 89 holds -60 (bias-corrected MR has negative values: the finite minimum that replaces
    NaN lies below the background); with `patch`, 30 x 30 background voxels of slice 90 are NaN."""
    from segmote.samples import fetch_sample

    src = nib.load(fetch_sample("colin27") / "Dataset004_Colin27Brain/imagesTr/colin27_0000.nii.gz")
    array = np.asarray(src.dataobj)[:, :, 89:92].astype(np.float32)
    array[0, 0, 0] = -60.0
    if patch:
        array[:30, :30, 1] = np.nan  # all 0 (background) in the clean image
    nib.save(nib.Nifti1Image(array, src.affine), path)
    return path


def test_mr_percentiles_leave_the_replaced_voxels_out(tmp_path):
    """MR is clipped to the 0.5 / 99.5 percentiles of the slice: the 900 replaced voxels (2.3 %
    of the slice, at the finite minimum -60) made the low percentile -60, so the background
    read as grey and the mask of the finite voxels changed. Now they are left out of the
    percentiles and read as the darkest valid value: the encoder input, and the mask, are
    those of the clean image."""
    box = PromptNumbers(boxes=((60, 60, 1, 120, 120, 1),))
    mr = PredictOptions(modality="MR", adapter=None)
    clean = predict_file(_float_mr(tmp_path / "clean.nii.gz", False), tmp_path / "a.nii.gz",
                         box, mr)
    src = _float_mr(tmp_path / "nan.nii.gz", True)
    before = src.read_bytes()
    with pytest.warns(UserWarning, match="900 of 117831 values are NaN or Inf; replaced by "
                                         "the image's finite minimum -60"):
        got = predict_file(src, tmp_path / "b.nii.gz", box, mr)
    assert np.count_nonzero(clean.label) > 100
    np.testing.assert_array_equal(got.label, clean.label)
    assert src.read_bytes() == before


def test_preprocess_ignores_replaced_pixels_in_statistics_and_min_max():
    """The encoder input of a slice with replaced pixels: MR clipped to the percentiles of the
    valid pixels alone, CT to its window, and the replaced pixels read as the darkest valid
    value, also for a CT window whose low end the slice does not reach (min-max stretched to
    the replaced value before)."""
    from segmote.transforms import preprocess

    ct = np.asarray(nib.load(bundled_sample_path("lung2_ct_crop")).dataobj)[:, :, 7].T
    body = ct[60:200, 60:200].astype(np.float32)  # no air outside the body: min > -1000 HU
    assert body.min() > -1000
    valid = np.ones(body.shape, bool)
    valid[:20, :20] = False
    filled = np.where(valid, body, -3024.0).astype(np.float32)  # finite_image's fill
    lo, hi = np.percentile(body[valid], (0.5, 99.5))
    references = {  # (modality, window) -> the image that needs no statistics to leave out
        ("CT", "-200,2000"): (np.where(valid, body, body[valid].min()), "CT", "-200,2000"),
        ("MR", None): (np.where(valid, np.clip(body, lo, hi), lo), None, None)}
    for (modality, window), (image, ref_modality, ref_window) in references.items():
        want, _ = preprocess(image.astype(np.float32), 256, ref_modality, ref_window)
        got, _ = preprocess(filled, 256, modality, window, valid)
        old, _ = preprocess(filled, 256, modality, window)
        assert torch.equal(got, want), modality
        assert not torch.equal(old, want), modality  # what the statistics did before


def test_python_api_replaces_non_finite_values_as_the_command_line_does(tmp_path):
    """The Python API given NaN the command line never saw: `Segmenter.set_image` on a raw
    slice (NaN used to make the whole encoder input NaN: an empty or full mask) and
    `segment_volume` on a volume `read_image` left unreplaced give the masks of the replaced
    image, with a warning; a slice with no finite value is one InputError."""
    import segmote
    from segmote.errors import InputError
    from segmote.predict.prompts import ObjectPrompt
    from segmote.predict.volume import segment_volume

    src = _float_ct(tmp_path / "nan.nii.gz", np.nan)
    raw = read_image(src)
    assert np.isnan(raw.array).sum() == 256
    with pytest.warns(UserWarning, match="256 of 983040 values are NaN or Inf"):
        fixed = finite_image(raw)
    seg = segmote.Segmenter(segmote.load_model(adapter=None))
    box = (83, 93, 173, 162)
    seg.set_image(fixed.array[:, :, 7].T, modality="CT", valid=fixed.meta["finite"][:, :, 7].T)
    want = seg.predict(box=box)
    with pytest.warns(UserWarning, match="set_image: 256 of 65536 values are NaN or Inf"):
        seg.set_image(raw.array[:, :, 7].T, modality="CT")
    got = seg.predict(box=box)
    assert np.array_equal(got.mask, want.mask) and 0 < want.mask.sum() < 0.2 * want.mask.size
    with pytest.raises(InputError, match="no finite value"):
        seg.set_image(np.full((32, 32), np.nan, np.float32))
    prompt = [ObjectPrompt(box=(83, 93, 6, 173, 162, 8))]
    with pytest.warns(UserWarning, match="256 of 983040 values are NaN or Inf"):
        api = segment_volume(seg, raw, prompt, modality="CT", propagate=True)
    assert np.isnan(raw.array).sum() == 256  # the caller's data is left alone
    np.testing.assert_array_equal(api, segment_volume(seg, fixed, prompt, modality="CT",
                                                      propagate=True))
    assert api[:, :, 7].any()
