"""Metric core: hand-checkable cases, empty-mask rules, agreement with independent references."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from segmote.evaluation.metrics import (
    case_metrics,
    dice,
    hd95,
    image_diagonal_mm,
    nsd,
    surface_distances,
)


# --- independent reference: explicit surface point sets + KD-tree, float64 -----------------------
def _ref_surface_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Physical coordinates of foreground voxels with a background face-neighbour (or the border).

    Written without erosion or distance transforms: pad with background and look at the 2*ndim
    face neighbours of every voxel directly.
    """
    padded = np.pad(mask, 1, constant_values=False)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    on_surface = np.zeros_like(mask)
    for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
        neighbour = np.roll(padded, step, axis=axis)[core]
        on_surface |= mask & ~neighbour
    return np.argwhere(on_surface) * np.asarray(spacing, dtype=float)


def _ref_metrics(a: np.ndarray, b: np.ndarray, spacing, tol: float) -> tuple[float, float]:
    pa, pb = _ref_surface_points(a, spacing), _ref_surface_points(b, spacing)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    ref_nsd = (np.sum(d_ab <= tol) + np.sum(d_ba <= tol)) / (len(d_ab) + len(d_ba))
    ref_hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return float(ref_nsd), float(ref_hd95)


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, level: float) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


# --- hand-checkable cases ------------------------------------------------------------------------
def test_dice_2x2_is_0_8():
    pred = np.array([[1, 1], [1, 0]], dtype=bool)
    gt = np.array([[1, 1], [0, 0]], dtype=bool)
    assert dice(pred, gt) == pytest.approx(0.8)


def test_single_voxels_anisotropic_distance():
    """Two single voxels offset by (1, 2, 3) voxels at spacing (0.5, 0.7, 2.5) mm."""
    spacing = (0.5, 0.7, 2.5)
    pred, gt = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    pred[1, 1, 1] = True
    gt[2, 3, 4] = True
    expected = math.sqrt(0.5**2 + (2 * 0.7) ** 2 + (3 * 2.5) ** 2)
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    np.testing.assert_allclose(d_pg, [expected])
    np.testing.assert_allclose(d_gp, [expected])
    assert hd95(pred, gt, spacing) == pytest.approx(expected)
    assert nsd(pred, gt, spacing, expected - 1e-6) == 0.0
    assert nsd(pred, gt, spacing, expected) == 1.0  # tolerance is inclusive
    assert dice(pred, gt) == 0.0


def test_line_shift_along_coarse_axis():
    """A 1-voxel-thick line shifted by one slice along the 2.5 mm axis: every distance is 2.5."""
    spacing = (0.8, 0.8, 2.5)
    pred, gt = np.zeros((3, 10, 4), bool), np.zeros((3, 10, 4), bool)
    gt[1, 2:8, 1] = True
    pred[1, 2:8, 2] = True
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    np.testing.assert_allclose(d_pg, np.full(6, 2.5))
    np.testing.assert_allclose(d_gp, np.full(6, 2.5))
    assert hd95(pred, gt, spacing) == pytest.approx(2.5)
    assert nsd(pred, gt, spacing, 2.0) == 0.0
    assert nsd(pred, gt, spacing, 2.5) == 1.0


def test_cube_surface_is_face_connected_shell():
    """A 3x3x3 cube: face-connected erosion leaves only its centre, so 26 surface voxels."""
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    d_pg, d_gp = surface_distances(cube, cube, (1.0, 2.0, 3.0))
    assert d_pg.size == d_gp.size == 26
    assert np.all(d_pg == 0)
    assert hd95(cube, cube, (1.0, 2.0, 3.0)) == 0.0
    assert nsd(cube, cube, (1.0, 2.0, 3.0), 0.0) == 1.0
    assert dice(cube, cube) == 1.0


def test_mask_touching_border_has_surface_there():
    """The outside of the image counts as background: a full image is all surface."""
    full = np.ones((4, 4), bool)
    d_pg, _ = surface_distances(full, full, (1.0, 1.0))
    assert d_pg.size == 12  # 16 pixels minus the 2x2 interior


# --- explicit empty rules ------------------------------------------------------------------------
def test_empty_rules():
    empty, blob = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    blob[2:4, 2:4] = True
    sp = (1.0, 1.0)
    assert (dice(empty, empty), nsd(empty, empty, sp, 1), hd95(empty, empty, sp)) == (1.0, 1.0, 0.0)
    for pred, gt in ((empty, blob), (blob, empty)):
        assert dice(pred, gt) == 0.0
        assert nsd(pred, gt, sp, 1.0) == 0.0
        assert hd95(pred, gt, sp) == math.inf


def test_case_metrics_rows_and_flags():
    gt = np.zeros((8, 8, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:4, 1:4, 1:3] = 1
    pred[1:4, 1:4, 1:3] = 1  # class 1: perfect
    gt[5:7, 5:7, :] = 2  # class 2: missed -> empty=pred
    pred[0, 7, 0] = 3  # class 3: false positive -> empty=gt
    labels = {1: "a", 2: "b", 3: "c", 4: "d"}  # class 4: absent from both -> empty=both
    rows = case_metrics(pred, gt, labels, (1.0, 1.0, 2.0), nsd_mm=1.0)
    assert [r["class"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["empty"] for r in rows] == ["none", "pred", "gt", "both"]
    assert [r["dice"] for r in rows] == [1.0, 0.0, 0.0, 1.0]
    assert [r["nsd"] for r in rows] == [1.0, 0.0, 0.0, 1.0]
    assert [r["hd95"] for r in rows] == [0.0, math.inf, math.inf, 0.0]
    assert [(r["n_gt_voxels"], r["n_pred_voxels"]) for r in rows] == [(18, 18), (16, 0), (0, 1), (0, 0)]


def test_image_diagonal():
    assert image_diagonal_mm((3, 4), (1.0, 1.0)) == pytest.approx(5.0)
    assert image_diagonal_mm((10, 10, 4), (0.3, 0.4, 1.25)) == pytest.approx(math.sqrt(9 + 16 + 25))


def test_bad_inputs_raise():
    a = np.zeros((3, 3), bool)
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1.0, 0.0))


# --- agreement with the independent references ---------------------------------------------------
CASES = [
    ((48, 40), (0.7, 1.9), 2.0),
    ((64, 64), (1.0, 1.0), 1.0),
    ((32, 28, 16), (0.8, 0.8, 2.5), 2.0),
    ((24, 30, 20), (1.3, 0.6, 3.0), 1.5),
]


@pytest.mark.parametrize("shape,spacing,tol", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_kdtree_reference(shape, spacing, tol, seed):
    rng = np.random.default_rng(seed)
    pred, gt = _blobs(rng, shape, 2.0, 0.5), _blobs(rng, shape, 2.0, 0.5)
    assert pred.any() and gt.any()
    ref_nsd, ref_hd95 = _ref_metrics(pred, gt, spacing, tol)
    assert nsd(pred, gt, spacing, tol) == pytest.approx(ref_nsd, abs=1e-6)
    assert hd95(pred, gt, spacing) == pytest.approx(ref_hd95, abs=1e-6)
    ref_dice = 2 * np.sum(pred & gt) / (np.sum(pred) + np.sum(gt))
    assert dice(pred, gt) == pytest.approx(ref_dice, abs=1e-12)


def test_small_masks_in_large_volume_match_reference():
    """Bounding-box cropping must not change results: two far-apart blobs in a big volume."""
    rng = np.random.default_rng(7)
    shape, spacing = (120, 110, 60), (0.8, 0.8, 2.5)
    pred, gt = np.zeros(shape, bool), np.zeros(shape, bool)
    gt[10:30, 10:25, 5:12] = _blobs(rng, (20, 15, 7), 1.0, 0.45)
    pred[80:100, 70:95, 40:50] = _blobs(rng, (20, 25, 10), 1.0, 0.45)
    ref_nsd, ref_hd95 = _ref_metrics(pred, gt, spacing, 2.0)
    assert hd95(pred, gt, spacing) == pytest.approx(ref_hd95, abs=1e-6)
    assert nsd(pred, gt, spacing, 2.0) == pytest.approx(ref_nsd, abs=1e-6) == 0.0


@pytest.mark.parametrize("shape,spacing,tol", CASES)
def test_matches_monai(shape, spacing, tol):
    """Cross-check against MONAI (float32 inside, hence the relative tolerance). MONAI is a test
    requirement (installed with --no-deps by .ci/run); its absence fails here, it is not skipped."""
    import monai.metrics as metrics
    import torch
    rng = np.random.default_rng(3)
    pred, gt = _blobs(rng, shape, 2.0, 0.5), _blobs(rng, shape, 2.0, 0.5)

    def onehot(mask: np.ndarray):  # (B=1, C=2, *spatial), channel 0 = background
        return torch.as_tensor(np.stack([~mask, mask])[None])

    with warnings.catch_warnings():  # MONAI's own deprecation warnings are not ours to test
        warnings.simplefilter("ignore")
        ref_hd = metrics.compute_hausdorff_distance(onehot(pred), onehot(gt), percentile=95, spacing=spacing)
        ref_nsd = metrics.compute_surface_dice(onehot(pred), onehot(gt), [tol], spacing=spacing)
    assert hd95(pred, gt, spacing) == pytest.approx(ref_hd.item(), rel=1e-6)
    assert nsd(pred, gt, spacing, tol) == pytest.approx(ref_nsd.item(), rel=1e-6)
