"""Propagation from a key slice (`segmote.predict.propagation`) on the bundled real lung CT with
the real LiteMedSAM: the object is followed inside the box's k-range, the result has the volume's
geometry, the stop rules do what they say, and propagation beats prompting every slice with the
same 3-D box (today's behaviour) on this case."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from segmote.errors import InputError
from segmote.evaluation.metrics import dice
from segmote.predict.prompts import ObjectPrompt
from segmote.slicing import volume_slice
from segmote.predict.propagation import (PropagationConfig, drop_thin_components, mask_box,
                                         propagate, propagate_object, propagate_objects)
from segmote.predict.segmenter import Segmenter
from tests.lung_case import CT, LABEL

BOX = (83, 93, 173, 162)  # the demo's in-plane box (slices 0..14; the tumour lies on 2..12)


@pytest.fixture(scope="module")
def lung():
    return np.asarray(nib.load(CT).dataobj), np.asarray(nib.load(LABEL).dataobj) > 0


@pytest.fixture(scope="module")
def encoded(base_model, lung):
    """The 15 slices of the crop encoded once: slice -> features (tests decode only)."""
    vol, _ = lung
    seg = Segmenter(base_model)
    feats = {}
    for k in range(vol.shape[2]):
        seg.set_image(volume_slice(vol, k, 2), modality="CT")
        feats[k] = seg.features
    return feats


def test_mask_box_margin_image_and_bound():
    m = np.zeros((20, 30), bool)
    m[5:8, 10:14] = True  # rows 5..7, cols 10..13
    assert mask_box(m, 0) == (10, 5, 13, 7)
    assert mask_box(m, 6) == (4, 0, 19, 13)  # clipped to the image
    assert mask_box(m, 6, bound=(8, 2, 30, 30)) == (8, 2, 19, 13)
    assert mask_box(m, 0, bound=(20, 0, 25, 5)) == (10, 5, 13, 7)  # disjoint bound: ignored


def test_stop_rules_by_hand():
    cfg = PropagationConfig(min_area=3, max_growth=2.0, min_overlap=0.5)
    prev = np.zeros((4, 4), bool)
    prev[:2, :2] = True  # 4 pixels
    same = prev.copy()
    assert not cfg.ends(same, prev)
    tiny = np.zeros_like(prev)
    tiny[0, :2] = True  # 2 pixels < min_area
    assert cfg.ends(tiny, prev)
    big = np.zeros_like(prev)
    big[:3, :3] = True  # 9 > 2 x 4 pixels
    assert cfg.ends(big, prev)
    moved = np.zeros_like(prev)
    moved[2:, 2:] = True  # same size, no overlap: Dice 0
    assert cfg.ends(moved, prev)
    with pytest.raises(InputError):
        PropagationConfig(min_overlap=1.5)
    with pytest.raises(InputError):
        PropagationConfig(key_bound=-0.1)


def test_total_growth_and_key_bound_by_hand():
    """Drift: each slice a little larger than the last (under `max_growth`) is stopped by the
    total against the key slice; without a user's box the key slice's box bounds the rest."""
    cfg = PropagationConfig(min_area=1, max_growth=2.0, min_overlap=0.1, max_total=1.5)
    key = np.zeros((10, 10), bool)
    key[:4, :4] = True  # 16 pixels
    grown = np.zeros_like(key)
    grown[:5, :5] = True  # 25 pixels: 1.56 x the previous slice's 16 and x the key's
    assert not cfg.ends(grown, key)  # inside a user's box: no key area, no total limit
    assert not PropagationConfig(min_overlap=0.1, max_total=0.0).ends(grown, key, key_area=16)
    assert cfg.ends(grown, key, key_area=16) and not cfg.ends(grown, key, key_area=17)
    assert PropagationConfig(key_bound=None).key_box_bound((10, 20, 30, 60)) is None
    assert PropagationConfig().key_box_bound((10, 20, 30, 60)) == (10, 20, 30, 60)
    assert PropagationConfig(key_bound=0.25).key_box_bound((10, 20, 30, 60)) == \
        (5, 10, 35, 70)


def test_propagate_object_follows_inside_k_range(base_model, lung):
    vol, gt = lung
    seg = Segmenter(base_model)
    r = propagate_object(seg, vol, 7, box=BOX, modality="CT", k_range=(6, 8))
    assert r.mask.shape == vol.shape and r.mask.dtype == bool
    assert r.slices == [6, 7, 8] and sorted(r.scores) == r.slices
    assert not r.mask[..., :6].any() and not r.mask[..., 9:].any()
    assert all(0 < s <= 1.5 for s in r.scores.values())
    assert dice(r.mask[..., 6:9], gt[..., 6:9]) > 0.85
    with pytest.raises(InputError, match="outside"):
        propagate_object(seg, vol, 15, box=BOX)
    with pytest.raises(InputError, match="box or points"):
        propagate_object(seg, vol, 7)


def test_propagation_beats_every_slice_and_stops(base_model, lung, encoded):
    vol, gt = lung
    seg = Segmenter(base_model)

    def set_slice(k: int) -> None:
        seg.set_features(encoded[k], vol.shape[:2][::-1])

    every = np.zeros_like(gt)
    for k in range(15):
        set_slice(k)
        every[..., k] = seg.predict(box=BOX).mask.T
    prop = propagate(seg, set_slice, vol.shape, 7, {"box": BOX}, k_range=(0, 14), bound=BOX)
    d_every, d_prop = dice(every, gt), dice(prop.mask, gt)
    assert d_prop > d_every + 0.05, (d_prop, d_every)
    # a box on the key slice, no k-limits: the object is followed and ends somewhere
    pt = propagate(seg, set_slice, vol.shape, 7, {"box": BOX})
    assert 7 in pt.slices and pt.slices == list(range(pt.slices[0], pt.slices[-1] + 1))
    assert dice(pt.mask, gt) > 0.5


def test_depth_limit_by_hand():
    cfg = PropagationConfig(max_depth=1.0)
    # a 20 x 10 px key box; columns 0.5 mm, rows 1 mm, slices 2 mm: half-size 5 mm = 2.5 slices
    assert cfg.depth_limit((0, 0, 19, 9), (0.5, 1.0, 2.0), axis=2) == 3
    assert PropagationConfig(max_depth=0.5).depth_limit((0, 0, 19, 9), (0.5, 1.0, 2.0), 2) == 2
    # a sagittal slice (axis 0): columns follow Y, rows Z, slices X
    assert cfg.depth_limit((0, 0, 19, 9), (4.0, 1.0, 1.0), axis=0) == 3
    assert PropagationConfig(max_depth=None).depth_limit((0, 0, 19, 9), (1, 1, 1), 2) is None
    with pytest.raises(InputError, match="max_depth"):
        PropagationConfig(max_depth=0)


def test_one_slice_prompt_depth_limit(base_model, lung, encoded):
    """A one-slice prompt is followed at most max_depth x its box's half-size (mm) away; a 3-D
    box's k-range is the user's and is not limited."""
    vol, gt = lung
    seg = Segmenter(base_model)

    def set_slice(k: int) -> None:
        seg.set_features(encoded[k], vol.shape[:2][::-1])

    free = propagate(seg, set_slice, vol.shape, 7, {"box": BOX},
                     config=PropagationConfig(max_depth=None))
    assert free.slices[0] < 6 and free.slices[-1] > 8  # the tumour spans slices 2..12
    # the box is 91 px wide: with 1 mm pixels and 100 mm slices the half-size is 1 slice
    thick = (1.0, 1.0, 100.0)
    near = propagate(seg, set_slice, vol.shape, 7, {"box": BOX}, spacing=thick)
    assert near.slices == [6, 7, 8]
    assert np.array_equal(near.mask[..., 6:9], free.mask[..., 6:9])
    boxed = propagate(seg, set_slice, vol.shape, 7, {"box": BOX}, k_range=(0, 14), bound=BOX,
                      spacing=thick)
    assert len(boxed.slices) > 3


def test_propagate_objects_modes(base_model, lung):
    vol, gt = lung
    seg = Segmenter(base_model)
    three_d = ObjectPrompt(label=3, box=(83, 93, 6, 173, 162, 8))
    one_slice = ObjectPrompt(label=5, box=(83, 93, 10, 173, 162, 10))
    label, scores = propagate_objects(seg, vol, [three_d, one_slice], modality="CT")
    assert label.shape == vol.shape and label.dtype == np.uint8
    assert sorted(scores[0]) == [6, 7, 8] and sorted(scores[1]) == [10]  # no --propagate
    assert set(np.unique(label[..., 6:9])) <= {0, 3} and (label[..., 6:9] == 3).any()
    assert set(np.unique(label[..., 10])) == {0, 5} and not label[..., 11:].any()
    with pytest.raises(InputError, match="outside the box.s slices"):
        propagate_objects(seg, vol, [three_d], key_slice=12)
    two = ObjectPrompt(points=[(115.0, 125.0, 9.0), (115.0, 125.0, 10.0)], point_labels=[1, 1])
    with pytest.raises(InputError, match="one slice"):
        propagate_objects(seg, vol, [two], follow=True)


def test_drop_thin_components():
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:3, 1:3, 1:4] = 1  # spans 3 slices: kept
    label[4, 4, 2] = 1  # one slice: dropped
    label[0, 5, 0:2] = 2  # two slices: kept with min_slices=2, dropped with 3
    out = drop_thin_components(label, 2, 2)
    assert out[1:3, 1:3, 1:4].all() and out[4, 4, 2] == 0 and (out[0, 5, 0:2] == 2).all()
    assert not (drop_thin_components(label, 2, 3) == 2).any()
    assert label[4, 4, 2] == 1  # the input is left alone


def test_segment_volume_propagate_and_scores(base_model, lung, encoded):
    """The Python API: `segment_volume(..., propagate=True, key_slice=...)` is `propagate` from
    that slice inside the box's slices, and both modes return per-slice predicted IoUs when
    asked."""
    from segmote.errors import ParameterError
    from segmote.io import read_image
    from segmote.predict.volume import segment_volume

    vol, gt = lung
    data = read_image(CT)
    seg = Segmenter(base_model)
    obj = ObjectPrompt(label=2, box=(83, 93, 3, 173, 162, 11))
    label, scores = segment_volume(seg, data, [obj], 2, "CT", propagate=True, key_slice=6,
                                   return_scores=True)

    def set_slice(k: int) -> None:  # the fixture's features: decode only
        seg.set_features(encoded[k], vol.shape[:2][::-1])

    ref = propagate(seg, set_slice, vol.shape, 6, {"box": BOX}, k_range=(3, 11), bound=BOX)
    assert np.array_equal(label == 2, ref.mask) and set(np.unique(label)) == {0, 2}
    assert len(scores) == 1 and scores[0] == pytest.approx(ref.scores, abs=1e-6)
    assert 6 in scores[0] and all(0.0 <= s <= 1.0 for s in scores[0].values())
    one = ObjectPrompt(label=1, box=(83, 93, 6, 173, 162, 7))
    every, every_scores = segment_volume(seg, data, [one], 2, "CT", return_scores=True)
    assert sorted(every_scores[0]) == [6, 7] and set(np.unique(every)) == {0, 1}
    assert every_scores[0][6] == pytest.approx(ref.scores[6], abs=1e-6)
    assert isinstance(segment_volume(seg, data, [one], 2, "CT"), np.ndarray)
    with pytest.raises(ParameterError, match="key_slice.*propagate"):
        segment_volume(seg, data, [one], 2, "CT", key_slice=6)
