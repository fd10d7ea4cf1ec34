"""Prompt simulation: boxes within jitter bounds, central points, error clicks, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from segmote.simulated_prompts import (central_point, error_clicks, interior_distance,
                                      jittered_box, prompt_probabilities, sample_prompt,
                                      tight_box, to_model_coords)


def _rect(h=64, w=64, y=(10, 30), x=(20, 50)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y[0]:y[1], x[0]:x[1]] = True
    return m


def test_tight_box_is_the_extreme_pixels():
    assert tight_box(_rect()).tolist() == [20, 10, 49, 29]
    with pytest.raises(ValueError):
        tight_box(np.zeros((4, 4), bool))


def test_jittered_box_stays_within_bounds():
    mask = _rect()
    x0, y0, x1, y1 = tight_box(mask)
    mx, my = round(0.1 * (x1 - x0 + 1)), round(0.1 * (y1 - y0 + 1))  # 3, 2
    rng = np.random.default_rng(0)
    boxes = np.stack([jittered_box(mask, rng, 0.1) for _ in range(300)])
    assert (np.abs(boxes - [x0, y0, x1, y1]) <= [mx, my, mx, my]).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert len({tuple(b) for b in boxes}) > 20  # it does jitter
    edge = _rect(y=(0, 5), x=(0, 5))  # touching the border: clipped into the grid
    eb = np.stack([jittered_box(edge, rng, 0.5) for _ in range(100)])
    assert eb.min() >= 0 and eb[:, [0, 2]].max() <= 63


def test_central_point_is_inside_and_central():
    mask = _rect()
    dist = interior_distance(mask)
    rng = np.random.default_rng(1)
    for _ in range(100):
        x, y = central_point(mask, rng).astype(int)
        assert mask[y, x]
        assert dist[y, x] >= 0.5 * dist.max()
    # an L-shape: the point lies in the thick part, never on the thin arm
    ell = np.zeros((64, 64), bool)
    ell[10:50, 10:40] = True
    ell[45:48, 40:63] = True
    for _ in range(50):
        x, y = central_point(ell, rng).astype(int)
        assert 10 <= x < 40 and ell[y, x]


def test_interior_distance_counts_the_border_as_boundary():
    full = np.ones((5, 5), bool)
    assert interior_distance(full)[0, 0] == 1 and interior_distance(full)[2, 2] == 3


def test_error_clicks_land_in_error_regions_with_right_labels():
    gt = _rect(y=(10, 40), x=(10, 40))
    pred = np.zeros_like(gt)
    pred[10:40, 10:25] = True  # misses the right half (FN)
    pred[50:60, 50:60] = True  # a false blob (FP)
    rng = np.random.default_rng(2)
    for k in (1, 3, 4, 7):
        pts, labels = error_clicks(pred, gt, k, rng)
        assert pts.shape == (k, 2) and labels.shape == (k,)
        for (x, y), lab in zip(pts.astype(int), labels):
            assert (gt[y, x] and not pred[y, x]) if lab == 1 else (pred[y, x] and not gt[y, x])
    pts, labels = error_clicks(pred, gt, 1, rng)  # the largest region (FN, 450 px) comes first
    assert labels.tolist() == [1]
    pts, labels = error_clicks(pred, gt, 2, rng)
    assert sorted(labels.tolist()) == [0, 1]
    p, lab = error_clicks(gt, gt, 3, rng)  # perfect prediction: nothing to click
    assert p.shape == (0, 2) and lab.shape == (0,)


def test_seeded_determinism():
    mask = _rect()
    a = [sample_prompt(mask, np.random.default_rng(7), {"box": 0.5, "point": 0.5})
         for _ in range(3)]
    assert all(p.kind == a[0].kind for p in a)
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):
        p1 = sample_prompt(mask, r1, {"box": 0.4, "point": 0.3, "text": 0.3})
        p2 = sample_prompt(mask, r2, {"box": 0.4, "point": 0.3, "text": 0.3})
        assert p1.kind == p2.kind and p1.kind != "text"  # no text encoder: hook off
        assert np.array_equal(p1.points, p2.points)
        assert (p1.box is None and p2.box is None) or np.array_equal(p1.box, p2.box)


def test_prompt_mix_and_coordinate_scaling():
    p = prompt_probabilities({"box": 0.4, "point": 0.3, "text": 0.3}, allow_text=False)
    assert p == pytest.approx({"box": 4 / 7, "point": 3 / 7})
    kinds = [sample_prompt(_rect(), np.random.default_rng(i), {"box": 0.4, "point": 0.3,
                                                               "text": 0.3}).kind
             for i in range(400)]
    assert 0.5 < kinds.count("box") / 400 < 0.65
    text = sample_prompt(_rect(), np.random.default_rng(0), {"text": 1.0}, allow_text=True,
                         class_name="liver")
    assert text.kind == "text" and text.text == "liver"
    with pytest.raises(ValueError):
        prompt_probabilities({"scribble": 1.0}, False)
    assert to_model_coords(np.array([10, 20, 30, 40]), 256, 1024).tolist() == [40, 80, 120, 160]
