"""NaN / Inf voxels: never foreground, never in the statistics, never a silent guess.

A NaN reaching preprocessing poisons the min-max scaling of its whole slice (every value
becomes NaN, and the decoder reads NaN logits as foreground); an all-NaN volume was labelled
tumour everywhere. For prediction, `finite_image` replaces non-finite voxels by the finite
minimum of the image before anything else looks at it (one warning with the count), so the
modality guess, the CT window, the min-max range and the MR percentiles see finite values
only, and the replaced voxels read as the darkest background. Training refuses such images
(`require_finite`): a label drawn on undefined voxels teaches nothing.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from segmote.errors import InputError
from segmote.io.image import ImageData


def _non_finite(array: np.ndarray) -> np.ndarray | None:
    """Boolean mask of NaN / Inf entries, or None for integer data or when there are none."""
    if array.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(array)
    return bad if bad.any() else None


def finite_image(data: ImageData, stacklevel: int = 2) -> ImageData:
    """`data` with NaN / +-Inf replaced by the finite minimum (a copy; `data` is untouched).

    Warns once with the count; InputError if no value is finite. Integer images pass as they
    are. ``meta["non_finite"]`` records how many values were replaced, ``meta["finite"]``
    where the others are (`finite_mask`): the intensity statistics leave the replaced ones out.
    stacklevel: the warning's, as `warnings.warn` takes it (3: the caller's caller).
    """
    bad = _non_finite(data.array)
    if bad is None:
        return data
    n_bad, n = int(bad.sum()), bad.size
    if n_bad == n:
        raise InputError(f"{data.path}: no finite value (all {n} values are NaN or Inf)")
    fill = np.min(data.array[~bad])
    array = np.where(bad, fill, data.array).astype(data.array.dtype, copy=False)
    warnings.warn(f"{data.path}: {n_bad} of {n} values are NaN or Inf; replaced by the "
                  f"image's finite minimum {float(fill):g}", stacklevel=stacklevel)
    return dataclasses.replace(data, array=array,
                               meta={**data.meta, "non_finite": n_bad, "finite": ~bad})


def finite_mask(data: ImageData, k: int | None = None, axis: int = 2) -> np.ndarray | None:
    """Where `data` held finite values before `finite_image` replaced the others (None: all
    did): the whole image, or slice `k` along `axis` of a volume (`segmote.slicing`)."""
    from segmote.slicing import volume_slice

    mask = data.meta.get("finite")
    return mask if mask is None or k is None else volume_slice(mask, k, axis)


def require_finite(array: np.ndarray, path: str | Path) -> np.ndarray:
    """`array` itself, or InputError naming `path` if it holds NaN or Inf."""
    bad = _non_finite(np.asarray(array))
    if bad is not None:
        raise InputError(f"{path}: {int(bad.sum())} of {bad.size} values are NaN or Inf; "
                         "training needs finite images (fix or drop this case)")
    return array
