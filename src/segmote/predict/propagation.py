"""Propagation from a key slice: prompt one slice of a volume, follow the object through it.

The key slice is segmented from the user's prompt (a box and/or points in that slice's 2-D
pixels); every next slice is prompted from the previous slice's result, outward in both
directions, until the mask vanishes or shrinks below `PropagationConfig.min_area` pixels, or the
slice range (a 3-D box's k-limits) ends. This is what the LiteMedSAM reference inference for 3-D
("MedSAM on Laptop") and MedSAM2 do: the ends of an object get a box that fits them, not the
object's largest extent, and the user needs to know the object's extent in one slice only.

How the next slice is prompted (`PropagationConfig`, defaults chosen on validation data, see
docs/benchmarks.md "3-D propagation"): the previous mask's bounding box widened by `margin`
pixels on each side (kept inside the user's 3-D box when there is one), optionally with the
previous low-res logits as the mask prompt (SAM's refinement input).

Slices are encoded one at a time here (`seg.set_image`); `propagate` takes any `SliceSetter`, so
cached or batch-encoded features plug in without a second propagation loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmote.errors import InputError, ParameterError
from segmote.predict.click import is_click_prompt, predict_click
from segmote.slicing import in_plane_axes, set_volume_slice, volume_slice

# Puts slice k's features into the Segmenter (`Segmenter.set_image` or `set_features`).
SliceSetter = Callable[[int], None]


@dataclass(frozen=True)
class PropagationConfig:
    """How a slice is prompted from its neighbour's result, and when propagation stops.

    margin: pixels added on each side of the previous mask's bounding box.
    mask_prompt: also give the previous slice's low-res logits as the mask prompt.
    key_bound: without a user's in-plane box to stay in (a one-slice prompt followed through
        the volume), the boxes stay inside the key slice's box (the prompt's, else its mask's)
        grown by this fraction of its size on each side; None: unbounded. Without it SAM fills
        each box and the box + margin grows slice after slice (drift).
    max_depth: without a user's k-limits (a one-slice prompt), the object is followed at most
        this many times the key slice's box half-size (its larger side, in mm) away from the
        key slice on each side; None: to the volume's ends. A one-slice prompt says nothing
        about depth: the prior is an object about as deep as it is wide (1.0 cuts no sphere).
        Where neighbouring structures show no edge between them (brain parcels), the mask
        otherwise ran on almost to the volume's ends (Insula_R, on slices 51-95: 20-141).
    click_box: a key prompt of clicks alone (no box), followed beyond its slice, is decoded
        from boxes around the clicks (`segmote.predict.click.predict_click`): LiteMedSAM reads
        boxes, and a click alone gave it a near-empty key slice, so nothing was followed.
    A slice ends propagation in its direction (and stays empty) when its mask
    - has fewer than `min_area` pixels (the object vanished), or
    - grew to more than `max_growth` x the previous slice's mask, or (without a user's box to
      stay in) to more than `max_total` x the key slice's (it leaked into a neighbour: past an
      object's end SAM still segments whatever the box holds; 0: no limit on the total), or
    - overlaps the previous slice's mask with a 2-D Dice below `min_overlap` (it jumped to
      another structure).
    """

    margin: int = 4
    mask_prompt: bool = False
    min_area: int = 10
    max_growth: float = 2.0
    min_overlap: float = 0.5
    max_total: float = 1.5
    key_bound: float | None = 0.0
    max_depth: float | None = 1.0
    click_box: bool = True

    def __post_init__(self) -> None:
        if self.margin < 0 or self.min_area < 1 or self.max_growth <= 0 or \
                not 0 <= self.min_overlap <= 1 or self.max_total < 0 or \
                self.key_bound is not None and self.key_bound < 0 or \
                self.max_depth is not None and self.max_depth <= 0:
            raise InputError(f"propagation needs margin >= 0, min_area >= 1, max_growth > 0, "
                             f"0 <= min_overlap <= 1, max_total >= 0, key_bound None or "
                             f">= 0 and max_depth None or > 0, got {self}")

    def ends(self, mask: np.ndarray, previous: np.ndarray, key_area: int | None = None) -> bool:
        """Does this (H, W) mask, following `previous`, end the object? key_area: the key
        slice's mask's pixels (for `max_total`)."""
        area, before = int(mask.sum()), int(previous.sum())
        if area < self.min_area or area > self.max_growth * before:
            return True
        if self.max_total and key_area is not None and area > self.max_total * key_area:
            return True
        return 2.0 * int((mask & previous).sum()) / (area + before) < self.min_overlap

    def key_box_bound(self, key_box: Sequence[float]
                      ) -> tuple[float, float, float, float] | None:
        """The in-plane bound `key_bound` gives: the key box (x0, y0, x1, y1; the prompt's,
        else the key slice's mask's) grown by `key_bound` x its size on each side."""
        if self.key_bound is None:
            return None
        x0, y0, x1, y1 = key_box
        gx, gy = self.key_bound * (x1 - x0), self.key_bound * (y1 - y0)
        return x0 - gx, y0 - gy, x1 + gx, y1 + gy

    def depth_limit(self, key_box: Sequence[float], spacing: Sequence[float],
                    axis: int) -> int | None:
        """Slices a one-slice prompt is followed on each side of its key slice (`max_depth`):
        key_box (x0, y0, x1, y1) in slice pixels; spacing: the volume's voxel size in mm along
        (X, Y, Z)."""
        if self.max_depth is None:
            return None
        a, b = in_plane_axes(axis)  # columns follow axis a, rows axis b
        x0, y0, x1, y1 = key_box
        half_mm = max((x1 - x0 + 1) * spacing[a], (y1 - y0 + 1) * spacing[b]) / 2
        return int(np.ceil(self.max_depth * half_mm / spacing[axis]))


DEFAULT_CONFIG = PropagationConfig()


@dataclass
class Propagation:
    """Result of `propagate_object`.

    mask: bool, the volume's shape (X, Y, Z); True on the object.
    scores: slice index -> the model's predicted IoU of that slice's mask.
    slices: the slice indices segmented (ascending); the mask is empty elsewhere.
    """

    mask: np.ndarray
    scores: dict[int, float] = field(default_factory=dict)
    slices: list[int] = field(default_factory=list)


def mask_box(mask: np.ndarray, margin: int,
             bound: Sequence[float] | None = None) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of an (H, W) mask's foreground widened by `margin` pixels, clipped to
    the image and to `bound` (x0, y0, x1, y1) when given (the user's box holds the object)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    x0, x1 = max(cols[0] - margin, 0), min(cols[-1] + margin, w - 1)
    y0, y1 = max(rows[0] - margin, 0), min(rows[-1] + margin, h - 1)
    if bound is not None:
        bx0, by0, bx1, by1 = bound
        nx0, ny0, nx1, ny1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        if nx0 <= nx1 and ny0 <= ny1:  # an empty intersection would say nothing: keep ours
            x0, y0, x1, y1 = nx0, ny0, nx1, ny1
    return float(x0), float(y0), float(x1), float(y1)


def propagate(seg: Any, set_slice: SliceSetter, shape: tuple[int, ...], key_slice: int,
              first_prompt: dict[str, Any], *, axis: int = 2,
              k_range: tuple[int, int] | None = None, bound: Sequence[float] | None = None,
              config: PropagationConfig = DEFAULT_CONFIG,
              record: Callable[[int, Any], None] | None = None,
              spacing: Sequence[float] | None = None, **decode_kwargs: Any) -> Propagation:
    """Segment slice `key_slice` from `first_prompt` (`Segmenter.predict` keywords: box, points,
    labels), then follow the mask outward within `k_range` (inclusive; default: the volume).

    seg: a `segmote.predict.Segmenter`. set_slice: puts slice k's features into it.
    shape: the volume's (X, Y, Z). bound: the user's in-plane box, which later boxes stay in
        (None: the key slice's limits of `config`, key_bound, max_total and max_depth).
    spacing: the volume's voxel size in mm along (X, Y, Z), for `max_depth` (None: 1 mm).
    record: called with (slice, `Prediction`) for every slice kept (routing, attention).
    decode_kwargs: passed to every `predict` (e.g. output="base" for SegMoTE's base mask).
    """
    lo, hi = k_range if k_range is not None else (0, shape[axis] - 1)
    if not lo <= key_slice <= hi:
        raise InputError(f"key slice {key_slice} lies outside the slice range {lo}..{hi}")
    out = np.zeros(shape, bool)
    result = Propagation(out)
    set_slice(key_slice)
    # a click that is followed: read as a box (a one-slice range decodes it as given, as a
    # click on a 2-D image is)
    if config.click_box and hi > lo and is_click_prompt(first_prompt):
        first = predict_click(seg, first_prompt["points"], first_prompt.get("labels"),
                              **decode_kwargs)
    else:
        first = seg.predict(**first_prompt, **decode_kwargs)
    if int(first.mask.sum()) < config.min_area:
        return result  # nothing found on the key slice: nothing to follow
    set_volume_slice(out, key_slice, axis, first.mask)
    result.scores[key_slice] = float(first.score)
    # without the user's box to stay in, the key slice's box and mask limit the growth
    key_area = None if bound is not None else int(first.mask.sum())
    if bound is None:
        key_box = first_prompt.get("box") or mask_box(first.mask, 0)
        bound = config.key_box_bound(key_box)
        depth = config.depth_limit(key_box, spacing or (1.0, 1.0, 1.0), axis)
        if depth is not None:
            lo, hi = max(lo, key_slice - depth), min(hi, key_slice + depth)
    if record is not None:
        record(key_slice, first)
    for step in (-1, 1):
        prev, k = first, key_slice + step
        while lo <= k <= hi:
            kw: dict[str, Any] = {"box": mask_box(prev.mask, config.margin, bound)}
            if config.mask_prompt:
                kw["mask_input"] = prev.lowres_logits
            set_slice(k)
            pred = seg.predict(**kw, **decode_kwargs)
            if config.ends(pred.mask, prev.mask, key_area):
                break
            set_volume_slice(out, k, axis, pred.mask)
            result.scores[k] = float(pred.score)
            if record is not None:
                record(k, pred)
            prev, k = pred, k + step
    result.slices = sorted(result.scores)
    return result


def propagation_order(key_slice: int, lo: int, hi: int) -> list[int]:
    """The slices `propagate` visits, in its order, if the object never ends early: the key
    slice, down to `lo`, then up from the key slice to `hi`."""
    return [key_slice, *range(key_slice - 1, lo - 1, -1), *range(key_slice + 1, hi + 1)]


def volume_setter(seg: Any, volume: np.ndarray, axis: int = 2, modality: str | None = None,
                  window: str | None = None, valid: np.ndarray | None = None) -> SliceSetter:
    """A `SliceSetter` that encodes slice k of `volume` (X, Y, Z) with `seg.set_image`.
    valid: the volume's `segmote.io.finite.finite_mask` (None: every voxel was finite)."""
    def set_slice(k: int) -> None:
        seg.set_image(volume_slice(volume, k, axis), modality=modality, window=window,
                      valid=None if valid is None else volume_slice(valid, k, axis))

    return set_slice


def propagate_object(seg: Any, volume: np.ndarray, key_slice: int, *,
                     box: Sequence[float] | None = None, points: Any = None,
                     point_labels: Any = None, axis: int = 2, modality: str | None = None,
                     window: str | None = None, k_range: tuple[int, int] | None = None,
                     spacing: Sequence[float] | None = None) -> Propagation:
    """Segment one object of a volume from a prompt on its key slice and follow it.

    volume: (X, Y, Z) array as read (`ImageData.array`). key_slice: index along `axis`.
    box: (x0, y0, x1, y1) and/or points [(x, y), ...] with point_labels (1 / 0) in the key
        slice's 2-D pixels, as `Segmenter.predict` takes them: the slice image is
        `volume_slice(volume, k, axis)` (rows = j, columns = i for axis 2).
    k_range: (k0, k1) inclusive slice limits (a 3-D box's); default: the whole volume.
    With `k_range` (a 3-D box) the box also bounds the boxes of the other slices; without,
    `PropagationConfig.key_bound` / `max_total` limit the growth and `max_depth` (with the
    volume's voxel `spacing` in mm along (X, Y, Z); None: 1 mm) how far it is followed.
    """
    if box is None and points is None:
        raise InputError("propagation needs a box or points on the key slice")
    if volume.ndim != 3:
        raise InputError(f"propagation needs a 3-D volume, got shape {volume.shape}")
    if not 0 <= key_slice < volume.shape[axis]:
        raise InputError(f"key slice {key_slice} lies outside the volume "
                         f"(0..{volume.shape[axis] - 1} along axis {axis})")
    prompt: dict[str, Any] = {}
    if box is not None:
        prompt["box"] = tuple(float(v) for v in box)
    if points is not None:
        prompt["points"], prompt["labels"] = points, point_labels
    setter = volume_setter(seg, volume, axis, modality, window)
    # a 3-D box bounds every slice; a one-slice prompt is bounded by `PropagationConfig`
    return propagate(seg, setter, volume.shape, key_slice, prompt, axis=axis, k_range=k_range,
                     bound=prompt.get("box") if k_range is not None else None,
                     spacing=spacing)


def _object_plan(obj: Any, axis: int, depth: int, key_slice: int | None,
                 follow: bool) -> tuple[int, dict[str, Any], tuple[int, int], Any]:
    """(key slice, first prompt in 2-D slice pixels, k-range, bound) of one `ObjectPrompt`."""
    a, b = in_plane_axes(axis)
    box, k_range, bound = obj.box, (0, depth - 1), None
    ks = {int(round(p[axis])) for p in obj.points}
    if box is not None:
        k0, k1 = int(round(box[axis])), int(round(box[axis + 3]))
        if k0 < k1:  # a 3-D box bounds every slice (a one-slice box: `PropagationConfig`)
            bound = (box[a], box[b], box[a + 3], box[b + 3])
            k_range = (k0, k1)
            # points beside the box mark the key slice (all on one slice, checked below)
            key = key_slice if key_slice is not None else min(ks) if ks else (k0 + k1) // 2
            if not k0 <= key <= k1:
                raise ParameterError("key_slice", f"key slice {key} ({{key_slice}}, or the "
                                     f"points' slice) lies outside the box's slices {k0}..{k1}")
        else:
            key = k0
        ks.add(key)
    else:
        key = next(iter(ks))
    if len(ks) > 1:
        raise ParameterError("every_slice", "propagation takes points on one slice (the key "
                             "slice); prompt every slice instead with {every_slice}")
    if k_range == (0, depth - 1) and not follow and (box is None or k0 == k1):
        k_range = (key, key)  # a one-slice prompt segments only its slice
    prompt: dict[str, Any] = {"box": (box[a], box[b], box[a + 3], box[b + 3])} \
        if box is not None else {}
    if obj.points:
        prompt["points"] = [(p[a], p[b]) for p in obj.points]
        prompt["labels"] = list(obj.point_labels)
    return key, prompt, k_range, bound


def propagate_objects(seg: Any, volume: np.ndarray, objects: list[Any], *, axis: int = 2,
                      modality: str | None = None, window: str | None = None,
                      key_slice: int | None = None, follow: bool = False,
                      record: Callable[[int, int, Any], None] | None = None,
                      valid: np.ndarray | None = None, spacing: Sequence[float] | None = None,
                      slices: Any = None,
                      **decode_kwargs: Any) -> tuple[np.ndarray, list[dict[int, float]]]:
    """Several `ObjectPrompt`s of one volume, each propagated -> (label map of the volume's
    shape, per object {slice: predicted IoU}).

    An object with a 3-D box whose k0 < k1 is followed inside the box's slices from
    `key_slice` (default: the slice of its points, else the middle one); a one-slice prompt
    (a box with k0 == k1, or points on one slice) is followed through the whole volume when
    `follow`, else it segments only its slice. Where objects overlap, the earlier one keeps
    the voxel. record: called with (object number, slice, `Prediction`) for every slice
    kept; valid: the volume's `segmote.io.finite.finite_mask`; spacing: its voxel size in mm
    along (X, Y, Z) (a one-slice prompt's `max_depth`); decode_kwargs go to `predict`.
    slices: a `SliceSetter` of this volume with `follow(order)`, told each object's
    `propagation_order` before it is followed (`segmote.predict.batched.EncodedSlices`:
    slices encoded ahead in batches); default: `volume_setter`, one slice when asked.
    """
    from segmote.predict.prompts import label_dtype

    out = np.zeros(volume.shape, label_dtype(objects))
    setter = slices if slices is not None else volume_setter(seg, volume, axis, modality,
                                                             window, valid)
    scores = []
    for n, obj in enumerate(objects):
        key, prompt, k_range, bound = _object_plan(obj, axis, volume.shape[axis], key_slice,
                                                   follow)
        if slices is not None:
            slices.follow(propagation_order(key, *k_range))
        rec = None if record is None else lambda k, pred, n=n: record(n, k, pred)
        result = propagate(seg, setter, volume.shape, key, prompt, axis=axis, k_range=k_range,
                           bound=bound, record=rec, spacing=spacing, **decode_kwargs)
        out[result.mask & (out == 0)] = obj.label
        scores.append(result.scores)
    return out, scores


def drop_thin_components(label: np.ndarray, axis: int = 2, min_slices: int = 2) -> np.ndarray:
    """Keep each label's 3-D connected components (26-connected) that span at least
    `min_slices` slices along `axis`; a class found on a single slice is most often a false
    positive of prompt-free segmentation. (X, Y, Z) label map -> a new one."""
    from scipy import ndimage

    out = label.copy()
    for value in np.unique(label[label > 0]):
        comps, n = ndimage.label(label == value, structure=np.ones((3, 3, 3), bool))
        for i, box in enumerate(ndimage.find_objects(comps), start=1):
            if box[axis].stop - box[axis].start < min_slices:
                out[box][comps[box] == i] = 0
    return out
