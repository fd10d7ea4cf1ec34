"""`segmote.slicing.volume_slice`: the one place volumes are cut into 2-D images."""

from __future__ import annotations

import numpy as np
import pytest

from segmote.slicing import volume_slice


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volume_slice_is_the_transposed_plane_and_a_view(axis: int) -> None:
    # readers hand back transposed (Fortran-ordered) views; both layouts must cut the same way
    vol_c = np.random.default_rng(0).integers(-1000, 1000, (7, 5, 3)).astype(np.int16)
    for vol in (vol_c, np.asfortranarray(vol_c), vol_c.T.copy().T):
        for k in range(vol.shape[axis]):
            plane = volume_slice(vol, k, axis)
            np.testing.assert_array_equal(plane, np.take(vol_c, k, axis=axis).T)
            assert np.shares_memory(plane, vol)  # a view: no per-slice copy of the volume
    # rows follow the higher in-plane axis: for axis 2 an (X, Y) slice becomes (Y, X)
    assert volume_slice(vol_c, 0, 2).shape == (5, 7)
