"""Prompt checks that run before any model work (issue 21, cases 8 and 12): a box without area
in the slice plane warns, whatever the slice axis (the check assumed axis 2: a sagittal box,
one voxel thick in x by nature, was warned about, and a box flat in z across axis 0 was not)."""

from __future__ import annotations

import warnings

import pytest

from segmote.predict.prompts import ObjectPrompt, check_objects

SHAPE = (40, 50, 60)


def _warnings(box: tuple[float, ...], axis: int) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_objects([ObjectPrompt(box=box)], SHAPE, True, axis)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("axis, box", [
    (2, (5, 6, 7, 20, 30, 7)),  # one axial slice: z0 = z1 is the normal case
    (0, (9, 6, 7, 9, 30, 40)),  # one sagittal slice: x0 = x1
    (1, (5, 8, 7, 20, 8, 40)),  # one coronal slice: y0 = y1
])
def test_a_box_one_slice_thick_across_the_axis_is_fine(axis, box):
    assert _warnings(box, axis) == []


@pytest.mark.parametrize("axis, box, flat", [
    (2, (5, 6, 7, 5, 30, 9), "x0 = x1"),
    (0, (9, 6, 7, 12, 30, 7), "z0 = z1"),
    (0, (9, 6, 7, 9, 6, 40), "y0 = y1"),
    (1, (5, 8, 7, 20, 9, 7), "z0 = z1"),
])
def test_a_box_without_area_in_the_slice_plane_warns(axis, box, flat):
    (message,) = _warnings(box, axis)
    assert f"has no area in the slice plane ({flat})" in message


def test_a_2d_box_without_area_warns():
    with pytest.warns(UserWarning, match=r"has no area in the slice plane \(y0 = y1\)"):
        check_objects([ObjectPrompt(box=(4, 5, 9, 5))], (20, 20), False)
