"""A followed click read as a box (`segmote.predict.click`): the boxes tried, which prompts
count as clicks, the box the rule keeps (the smallest scored within the slack of the best),
and on a real CT tumour (pyradiomics lung2, the real LiteMedSAM decoder) the key slice and the
followed object are found where the click alone gave the base decoder nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segmote.errors import InputError
from segmote.evaluation.metrics import dice
from segmote.evaluation.prompted import deepest_point
from segmote.predict.click import (CLICK_HALF_SIZES, CLICK_SCORE_SLACK, click_boxes,
                                   is_click_prompt, predict_click)
from segmote.predict.propagation import PropagationConfig, propagate
from segmote.predict.segmenter import Segmenter
from segmote.slicing import volume_slice

CT = "pyradiomics/Dataset001_PyradiomicsCT/imagesTr/lung2_0000.nrrd"
LABEL = "pyradiomics/Dataset001_PyradiomicsCT/labelsTr/lung2.nrrd"


def test_click_boxes_centred_clipped_and_once():
    boxes = click_boxes((50.0, 40.0), (100, 200))
    assert boxes.shape == (len(CLICK_HALF_SIZES), 4)
    assert tuple(boxes[0]) == (44.0, 34.0, 56.0, 46.0)  # half-size 6 around (50, 40)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 199).all() and (boxes[:, 3] <= 99).all()
    # in a 20 x 20 image every box from half-size 24 up clips to the whole image: kept once
    corner = click_boxes((0.0, 0.0), (20, 20))
    assert [tuple(b) for b in corner] == [(0, 0, 6, 6), (0, 0, 10, 10), (0, 0, 16, 16),
                                          (0, 0, 19, 19)]


@pytest.mark.parametrize("prompt, expected", [
    ({"points": [(1, 2)]}, True),
    ({"points": [(1, 2), (5, 5)], "labels": [0, 1]}, True),
    ({"points": [(1, 2)], "labels": [0]}, False),  # background clicks only: as given
    ({"points": [(1, 2)], "box": (0, 0, 9, 9)}, False),  # a box beside it: as given
    ({"points": [(1, 2)], "box": None, "labels": None}, True),
    ({"box": (0, 0, 9, 9)}, False),
    ({"points": [(1, 2)], "mask_input": np.zeros((4, 4))}, False),
])
def test_is_click_prompt(prompt, expected):
    assert is_click_prompt(prompt) is expected


@pytest.fixture(scope="module")
def lung2(samples_home):
    from segmote.io import read_image

    root = Path(samples_home) / "samples"
    image, label = read_image(root / CT).array, read_image(root / LABEL).array > 0
    key = int(np.argmax(label.sum(axis=(0, 1))))
    return image, label, key


def test_smallest_box_near_the_best_score_is_kept_and_finds_the_tumour(base_model, lung2):
    image, label, key = lung2
    seg = Segmenter(base_model)
    seg.set_image(volume_slice(image, key, 2), modality="CT")
    plane = volume_slice(label, key, 2)
    x, y = deepest_point(plane)
    singles = [seg.predict(box=tuple(float(v) for v in b), points=[(x, y)], labels=[1])
               for b in click_boxes((x, y), plane.shape)]
    scores = np.array([p.score for p in singles])
    for slack in (0.0, CLICK_SCORE_SLACK, 1.0):
        click = predict_click(seg, [(x, y)], slack=slack)
        # the kept mask is the single decode of the smallest box scored within `slack` of the
        # best (0: the best-scored box; 1: the smallest box)
        kept = singles[int(np.flatnonzero(scores >= scores.max() - slack)[0])]
        assert np.array_equal(click.mask, kept.mask)
        assert click.score == pytest.approx(kept.score, abs=1e-5)
    alone = seg.predict(points=[(x, y)], labels=[1])
    # LiteMedSAM reads boxes: the click alone finds nothing, the boxes around it the tumour
    assert dice(alone.mask, plane) < 0.2
    assert dice(predict_click(seg, [(x, y)]).mask, plane) > 0.85
    with pytest.raises(InputError, match="foreground"):
        predict_click(seg, [(x, y)], labels=[0])
    with pytest.raises(InputError, match="outside"):  # named as the click, not as a box
        predict_click(seg, [(600.0, y)])
    with pytest.raises(InputError, match="set_image"):
        predict_click(Segmenter(base_model), [(x, y)])


def test_followed_click_reads_its_key_slice_as_a_box(base_model, lung2):
    image, label, key = lung2
    seg = Segmenter(base_model)
    held: dict = {}

    def set_slice(k: int) -> None:  # each slice encoded once for both runs
        if k not in held:
            seg.set_image(volume_slice(image, k, 2), modality="CT")
            held[k] = (seg.features, seg.geometry.orig_hw)
        seg.set_features(*held[k])

    ks = (key - 3, key + 3)
    prompt = {"points": [deepest_point(volume_slice(label, key, 2))], "labels": [1]}
    truth = label[..., ks[0]:ks[1] + 1]
    runs = {flag: propagate(seg, set_slice, image.shape, key, prompt, k_range=ks,
                            config=PropagationConfig(click_box=flag)).mask
            for flag in (True, False)}
    assert dice(runs[True][..., ks[0]:ks[1] + 1], truth) > 0.8
    assert dice(runs[False][..., ks[0]:ks[1] + 1], truth) < 0.2
    # a click on one slice without propagation is decoded as given
    one = propagate(seg, set_slice, image.shape, key, prompt, k_range=(key, key)).mask
    set_slice(key)
    as_given = seg.predict(**prompt).mask
    assert np.array_equal(volume_slice(one, key, 2), as_given)
