"""Segment a 2-D image or a 3-D volume from prompts into one label map.

A prompt *object* is one structure to segment: a box, points, or both, and the label value it gets
in the output. Volumes are streamed slice by slice along `axis` (each needed slice is encoded
once, whatever the number of objects on it), so peak memory stays near the size of the volume
itself plus one slice's features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmote.errors import InputError
from segmote.io import ImageData
from segmote.predictor import Prediction, Segmenter

Progress = Callable[[Iterable[int]], Iterable[int]]
# Called once per decoded prompt with (object number, slice index or None for 2-D, prediction):
# how `segmote predict --routing/--attention` sees the model's extras without keeping them all.
Recorder = Callable[[int, "int | None", Prediction], None]


@dataclass
class ObjectPrompt:
    """One structure to segment.

    box: (x0, y0, x1, y1) for a 2-D image; (x0, y0, z0, x1, y1, z1) voxel indices (i, j, k),
        inclusive, for a volume — every slice in its range along the slicing axis is segmented.
    points: (x, y) or (x, y, z) coordinates with `point_labels` 1 (foreground) / 0 (background).
    """

    label: int = 1
    box: tuple[float, ...] | None = None
    points: list[tuple[float, ...]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)


def guess_modality(data: ImageData) -> str | None:
    """Modality from the file (DICOM tag), else CT when the values look like Hounsfield units."""
    if data.modality:
        return data.modality
    a = data.array
    if data.is_volume and np.issubdtype(a.dtype, np.number) and a.min() <= -500 and a.max() >= 500:
        return "CT"
    return None


def _in_plane_axes(axis: int) -> tuple[int, int]:
    a, b = (ax for ax in range(3) if ax != axis)
    return a, b  # image columns follow axis a, rows axis b


def volume_slice(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """The 2-D image of one slice: rows follow the higher in-plane axis, columns the lower one
    (for axis 2: `vol[:, :, k].T`, rows = j, cols = i, as viewers show an axial slice).

    A view, not a copy: basic indexing. (`np.take` copies a non-contiguous volume whole on every
    call — readers hand back transposed views — which cost more than the encoder per slice.)"""
    index_tuple = [slice(None)] * volume.ndim
    index_tuple[axis] = index
    return volume[tuple(index_tuple)].T


def check_prompts(objects: list[ObjectPrompt], shape: tuple[int, ...], is_volume: bool) -> None:
    """Fail early (before any model work) on prompts outside the image or volume."""
    for obj in objects:
        if is_volume:
            _check_volume_prompt(obj, shape)
            continue
        h, w = shape[:2]
        xy = ([obj.box[:2], obj.box[2:]] if obj.box is not None else []) + \
            [p[:2] for p in obj.points]
        for x, y in xy:
            if not (0 <= x <= w and 0 <= y <= h):
                raise InputError(f"prompt point ({x:g}, {y:g}) lies outside the image (width {w}, "
                                 f"height {h}; x is the column, y the row)")


def _check_volume_prompt(obj: ObjectPrompt, shape: tuple[int, ...]) -> None:
    coords = [obj.box[:3], obj.box[3:]] if obj.box is not None else []
    for p in coords + [pt[:3] for pt in obj.points]:
        for v, n, name in zip(p, shape, "xyz"):
            if not 0 <= v <= n - 1:
                raise InputError(f"prompt coordinate {name}={v:g} lies outside the volume of shape "
                                 f"{tuple(shape)} (voxel indices i, j, k start at 0)")
    if obj.box is not None and any(lo > hi for lo, hi in zip(obj.box[:3], obj.box[3:])):
        raise InputError(f"box {list(obj.box)}: needs x0 <= x1, y0 <= y1, z0 <= z1")


def _slice_prompts(objects: list[ObjectPrompt], axis: int,
                   shape: tuple[int, ...]) -> dict[int, list[tuple[int, dict]]]:
    """slice index -> [(object number, predict() kwargs in 2-D slice pixels)]."""
    a, b = _in_plane_axes(axis)
    plan: dict[int, list[tuple[int, dict]]] = {}
    for n, obj in enumerate(objects):
        _check_volume_prompt(obj, shape)
        ks: set[int] = set()
        if obj.box is not None:
            lo, hi = obj.box[:3], obj.box[3:]
            ks.update(range(int(round(lo[axis])), int(round(hi[axis])) + 1))
        ks.update(int(round(p[axis])) for p in obj.points)
        for k in sorted(ks):
            kw: dict = {}
            if obj.box is not None and lo[axis] - 0.5 <= k <= hi[axis] + 0.5:
                kw["box"] = (lo[a], lo[b], hi[a], hi[b])  # SAM's convention: pixel indices
            pts = [(p[a], p[b]) for p in obj.points if int(round(p[axis])) == k]
            if pts:
                kw["points"] = pts
                kw["labels"] = [lab for p, lab in zip(obj.points, obj.point_labels)
                                if int(round(p[axis])) == k]
            plan.setdefault(k, []).append((n, kw))
    return plan


def _combine(logit_maps: list[np.ndarray], labels: list[int], dtype: np.dtype) -> np.ndarray:
    """Per pixel, the label of the object with the highest positive logit (0 where none)."""
    stack = np.stack(logit_maps)
    best = stack.argmax(axis=0)
    out = np.asarray(labels, dtype=dtype)[best]
    out[stack.max(axis=0) <= 0] = 0
    return out


def label_dtype(objects: list[ObjectPrompt]) -> np.dtype:
    return np.dtype(np.uint8 if max((o.label for o in objects), default=1) < 256 else np.uint16)


def segment_image(seg: Segmenter, data: ImageData, objects: list[ObjectPrompt],
                  modality: str | None = None, window: str | None = None,
                  record: Recorder | None = None, **decode_kwargs) -> np.ndarray:
    """2-D image -> (H, W) label map. decode_kwargs go to `Segmenter.predict`."""
    if not objects:
        raise InputError("give at least one --box or --point")
    seg.set_image(data.array, modality=modality, window=window)
    maps = []
    for n, obj in enumerate(objects):
        kw: dict = dict(decode_kwargs)
        if obj.box is not None:
            kw["box"] = obj.box
        if obj.points:
            kw["points"], kw["labels"] = [p[:2] for p in obj.points], obj.point_labels
        pred = seg.predict(**kw)
        if record is not None:
            record(n, None, pred)
        maps.append(pred.logits)
    return _combine(maps, [o.label for o in objects], label_dtype(objects))


def segment_volume(seg: Segmenter, data: ImageData, objects: list[ObjectPrompt], axis: int = 2,
                   modality: str | None = None, window: str | None = None,
                   progress: Progress | None = None, record: Recorder | None = None,
                   **decode_kwargs) -> np.ndarray:
    """3-D volume (X, Y, Z) -> label map of the same shape; only prompted slices are encoded.
    decode_kwargs go to `Segmenter.predict`."""
    if not objects:
        raise InputError("give at least one --box or --point")
    vol = data.array
    plan = _slice_prompts(objects, axis, vol.shape)
    out = np.zeros(vol.shape, dtype=label_dtype(objects))
    ks = sorted(plan)
    for k in (progress(ks) if progress else ks):
        seg.set_image(volume_slice(vol, k, axis), modality=modality, window=window)
        maps = []
        for n, kw in plan[k]:
            pred = seg.predict(**kw, **decode_kwargs)
            if record is not None:
                record(n, k, pred)
            maps.append(pred.logits)
        labels = [objects[n].label for n, _ in plan[k]]
        index = [slice(None)] * 3
        index[axis] = k
        out[tuple(index)] = _combine(maps, labels, out.dtype).T
    return out


def auto_image(seg: Segmenter, image: np.ndarray, classes: list[str] | None,
               modality: str | None = None, window: str | None = None,
               threshold: float | None = None) -> Any:
    """Prompt-free multi-class segmentation of a 2-D image -> `AutoPrediction`."""
    seg.set_image(image, modality=modality, window=window)
    return seg.predict_auto(classes, threshold)


def auto_volume(seg: Segmenter, data: ImageData, classes: list[str] | None, axis: int = 2,
                modality: str | None = None, window: str | None = None,
                threshold: float | None = None,
                progress: Progress | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Prompt-free multi-class segmentation of every slice of a volume along `axis`.

    Returns the label map (the volume's shape; value i = classes[i - 1]), the classes, and per
    class the number of slices where its mask was kept.
    """
    vol = data.array
    out: np.ndarray | None = None
    names: list[str] = []
    slices: dict[str, int] = {}
    ks = range(vol.shape[axis])
    for k in (progress(ks) if progress else ks):
        pred = auto_image(seg, volume_slice(vol, k, axis), classes, modality, window, threshold)
        if out is None:
            names = pred.classes
            out = np.zeros(vol.shape, pred.label_map.dtype)
            slices = dict.fromkeys(names, 0)
        index: list[Any] = [slice(None)] * 3
        index[axis] = k
        out[tuple(index)] = pred.label_map.T
        for n, kept in pred.kept.items():
            slices[n] += int(kept)
    return out, names, slices
