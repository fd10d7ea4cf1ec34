"""2-D images and 3-D volumes segmented into one label map, from prompts or prompt-free.

A prompt *object* (`ObjectPrompt`) is one structure to segment and the label value it gets.
Volumes are streamed slice by slice along `axis` (each needed slice is encoded once, whatever
the number of objects on it), so peak memory stays near the size of the volume itself plus one
slice's features. Slices are cut by `segmote.slicing.volume_slice`, as training cuts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from segmote.errors import ParameterError
from segmote.io import ImageData
from segmote.io.finite import finite_image, finite_mask
from segmote.predict.auto import AutoPrediction
from segmote.predict.prompts import ObjectPrompt, check_volume_prompt, label_dtype
from segmote.predict.propagation import propagate_objects
from segmote.predict.segmenter import Prediction, Segmenter
from segmote.slicing import in_plane_axes, set_volume_slice, volume_slice

Progress = Callable[[Iterable[int]], Iterable[int]]
# Called once per decoded prompt with (object number, slice index or None for 2-D, prediction):
# how `predict_file(..., routing / attention)` sees the model's extras without keeping them all.
Recorder = Callable[[int, "int | None", Prediction], None]


def guess_modality(data: ImageData) -> str | None:
    """Modality from the file (DICOM tag), else CT when the values look like Hounsfield units."""
    if data.modality:
        return data.modality
    a = data.array
    if data.is_volume and np.issubdtype(a.dtype, np.number) and a.min() <= -500 and a.max() >= 500:
        return "CT"
    return None


def slice_prompts(objects: list[ObjectPrompt], axis: int,
                  shape: tuple[int, ...]) -> dict[int, list[tuple[int, dict]]]:
    """slice index -> [(object number, `Segmenter.predict` prompts in 2-D slice pixels)]."""
    a, b = in_plane_axes(axis)
    plan: dict[int, list[tuple[int, dict]]] = {}
    for n, obj in enumerate(objects):
        check_volume_prompt(obj, shape, axis)
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


def combine(logit_maps: list[np.ndarray], labels: list[int], dtype: np.dtype) -> np.ndarray:
    """Per pixel, the label of the object with the highest positive logit (0 where none)."""
    stack = np.stack(logit_maps)
    best = stack.argmax(axis=0)
    out = np.asarray(labels, dtype=dtype)[best]
    out[stack.max(axis=0) <= 0] = 0
    return out


def decode_arguments(text: str | None, attention: bool) -> dict[str, Any]:
    """The `Segmenter.predict` arguments every object shares."""
    return {**({"text": text} if text is not None else {}),
            **({"return_attention": True} if attention else {})}


def segment_image(seg: Segmenter, data: ImageData, objects: list[ObjectPrompt],
                  modality: str | None = None, window: str | None = None,
                  record: Recorder | None = None, text: str | None = None,
                  attention: bool = False) -> np.ndarray:
    """2-D image -> (H, W) label map.

    text: a class name given with every object; attention: ask the model for the expert
    tokens' attention maps (for `record`). NaN / Inf in `data`: `segmote.io.finite`."""
    data = finite_image(data, stacklevel=3)  # the warning names the caller's line
    seg.set_image(data.array, modality=modality, window=window, valid=finite_mask(data))
    maps = []
    for n, obj in enumerate(objects):
        kw = decode_arguments(text, attention)
        if obj.box is not None:
            kw["box"] = obj.box
        if obj.points:
            kw["points"], kw["labels"] = [p[:2] for p in obj.points], obj.point_labels
        pred = seg.predict(**kw)
        if record is not None:
            record(n, None, pred)
        maps.append(pred.logits)
    return combine(maps, [o.label for o in objects], label_dtype(objects))


def segment_volume(seg: Segmenter, data: ImageData, objects: list[ObjectPrompt], axis: int = 2,
                   modality: str | None = None, window: str | None = None,
                   progress: Progress | None = None, record: Recorder | None = None,
                   text: str | None = None, attention: bool = False, *,
                   propagate: bool = False, key_slice: int | None = None,
                   return_scores: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, list[dict[int, float]]]:
    """3-D volume (X, Y, Z) -> label map of the same shape; only prompted slices are encoded.
    text, attention: as `segment_image`; progress: wraps the slices of the every-slice mode.

    propagate: follow each object from a key slice (`segmote.predict.propagation`): a 3-D box
        with k0 < k1 from `key_slice` (default: its points' slice, else its middle slice)
        inside its slices, a one-slice prompt until the object ends. False (default): every
        slice of a box's k-range is prompted with its in-plane box, points only their slice.
    key_slice: the slice propagation starts from; needs `propagate`.
    return_scores: also return, per object, {slice: the model's predicted IoU} of every slice
        it was segmented on -> (label map, scores).
    NaN / Inf in `data` are replaced as the command line does (`segmote.io.finite`, a warning).
    """
    data = finite_image(data, stacklevel=3)
    if key_slice is not None and not propagate:
        raise ParameterError("key_slice", "{key_slice} is where propagation starts: give "
                             "{propagate}=True with it")
    vol = data.array
    if propagate:
        for obj in objects:
            check_volume_prompt(obj, vol.shape)
        label, scores = propagate_objects(seg, vol, objects, axis=axis, modality=modality,
                                          window=window, key_slice=key_slice, follow=True,
                                          record=record, valid=finite_mask(data),
                                          spacing=data.spacing,
                                          **decode_arguments(text, attention))
        return (label, scores) if return_scores else label
    plan = slice_prompts(objects, axis, vol.shape)
    out = np.zeros(vol.shape, dtype=label_dtype(objects))
    scores = [{} for _ in objects]
    ks = sorted(plan)
    for k in (progress(ks) if progress else ks):
        seg.set_image(volume_slice(vol, k, axis), modality=modality, window=window,
                      valid=finite_mask(data, k, axis))
        maps = []
        for n, kw in plan[k]:
            pred = seg.predict(**kw, **decode_arguments(text, attention))
            if record is not None:
                record(n, k, pred)
            scores[n][k] = float(pred.score)
            maps.append(pred.logits)
        labels = [objects[n].label for n, _ in plan[k]]
        set_volume_slice(out, k, axis, combine(maps, labels, out.dtype))
    return (out, scores) if return_scores else out


def auto_image(seg: Segmenter, image: np.ndarray, classes: list[str] | None,
               modality: str | None = None, window: str | None = None,
               threshold: float | None = None, valid: np.ndarray | None = None
               ) -> AutoPrediction:
    """Prompt-free multi-class segmentation of a 2-D image. valid: `Segmenter.set_image`."""
    seg.set_image(image, modality=modality, window=window, valid=valid)
    return seg.predict_auto(classes, threshold)


def auto_volume(seg: Segmenter, data: ImageData, classes: list[str] | None, axis: int = 2,
                modality: str | None = None, window: str | None = None,
                threshold: float | None = None,
                progress: Progress | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Prompt-free multi-class segmentation of every slice of a volume along `axis`.

    Returns the label map (the volume's shape; value i = classes[i - 1]), the classes, and per
    class the number of slices where its mask was kept. NaN / Inf: as `segment_volume`.
    """
    data = finite_image(data, stacklevel=3)
    vol = data.array
    out: np.ndarray | None = None
    names: list[str] = []
    slices: dict[str, int] = {}
    ks = range(vol.shape[axis])
    for k in (progress(ks) if progress else ks):
        pred = auto_image(seg, volume_slice(vol, k, axis), classes, modality, window, threshold,
                          finite_mask(data, k, axis))
        if out is None:
            names = pred.classes
            out = np.zeros(vol.shape, pred.label_map.dtype)
            slices = dict.fromkeys(names, 0)
        set_volume_slice(out, k, axis, pred.label_map)
        for n, kept in pred.kept.items():
            slices[n] += int(kept)
    return out, names, slices
