"""Volumes cut into 2-D images, with numpy only (no model, no torch on import).

The one place where a volume (X, Y, Z) becomes the 2-D slices that prediction, training, the
embedding cache and curation all see, so that every part of the project cuts them alike.
"""

from __future__ import annotations

import numpy as np


def in_plane_axes(axis: int) -> tuple[int, int]:
    """The two volume axes that span a slice across `axis`: image columns follow the first,
    rows the second (axis 2 -> (0, 1): columns = i, rows = j)."""
    a, b = (ax for ax in range(3) if ax != axis)
    return a, b


def volume_slice(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """The 2-D image of one slice: rows follow the higher in-plane axis, columns the lower one
    (for axis 2: `vol[:, :, k].T`, rows = j, cols = i, as viewers show an axial slice).

    A view, not a copy: basic indexing. (`np.take` copies a non-contiguous volume whole on every
    call — readers hand back transposed views — which cost more than the encoder per slice.)"""
    index_tuple = [slice(None)] * volume.ndim
    index_tuple[axis] = index
    return volume[tuple(index_tuple)].T


def set_volume_slice(volume: np.ndarray, index: int, axis: int, plane: np.ndarray) -> None:
    """Write a 2-D plane (rows, cols), cut as `volume_slice` cuts it, back into `volume`."""
    volume_slice(volume, index, axis)[...] = plane
