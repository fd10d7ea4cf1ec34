"""`predict_file`: typed prompts and options in, a label map (and figures) out.

    objects = [ObjectPrompt(box=(83, 93, 0, 173, 162, 14))]
    result = predict_file("ct.nii.gz", "seg.nii.gz", objects, PredictOptions(modality="CT"))

Every input is checked before any model work and nothing is written unless everything
succeeded. The way of a request: read the image (`segmote.io`), check the prompts
(`prompts`), load the model (`segmote.build`), segment slice by slice (`volume`, on
`Segmenter` / `AutoSegmenter`), write the label map with the input's geometry and the figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmote.build import load_model, resolve_device
from segmote.errors import ParameterError
from segmote.io import ImageData, LabelInfo, output_path_for, read_image, write_label
from segmote.modeling.segmote import SegMoTE
from segmote.overlay import check_png, save_overlay
from segmote.predict.prompts import (ObjectPrompt, PromptNumbers, check_label_value,
                                     check_objects, check_text)
from segmote.predict.propagation import drop_thin_components, propagate_objects
from segmote.predict.segmenter import Segmenter
from segmote.predict.volume import (Progress, _decode, auto_image, auto_volume, guess_modality,
                                    segment_image, segment_volume)
from segmote.routing import routing_table, save_attention_png
from segmote.slicing import volume_slice
from segmote.intensity import normalize_modality, parse_window


@dataclass
class PredictOptions:
    """How to segment (everything but the image and the prompts).

    backbone, checkpoint: the base model (`segmote.build.load_model`). adapter: a SegMoTE
        adapter file, "default" (the shipped one), "new" (untrained) or None (the base model).
    modality: "CT", "MR", ... (default: from the file, or CT for Hounsfield-like values);
        window: CT window "LEVEL,WIDTH" or a preset name. axis: the volume axis to slice along.
    overlay: write a PNG of the image with the label contours (a volume: its middle prompted
        slice). device: "cpu", "cuda" or "cuda:N". progress: a progress bar over slices.
    routing: collect the SegMoTE router's choice for every prompt (`PredictResult.routing`).
    attention: write the expert tokens' attention maps for the first object as a PNG (a
        volume: the middle slice of its range, like the overlay). Both need an adapter.
    text: a class name; beside boxes / points it is given with every object; alone it asks for
        prompt-free segmentation of that class (like auto with classes=[text]).
    auto: prompt-free segmentation of `classes` (default: every class the adapter knows, only
        those trained on the image's modality when the adapter records it) into one label
        map, value i = i-th class; every slice of a volume. threshold: confidence needed to
        keep a class's mask (default: the adapter's calibrated one).
    every_slice, propagate, key_slice (volumes, `segmote.predict.propagation`): a 3-D box with
        k0 < k1 is followed from its middle slice (or `key_slice`) inside its slices, unless
        `every_slice` (each slice of the range prompted with the box); a one-slice prompt is
        followed until the object ends when `propagate`, else only its slice is segmented.
    min_slices: prompt-free volumes keep only 3-D components on at least this many slices.
    label_names: label value -> name, over the class names of `text` / `auto`; written as
        DICOM-SEG segment names, in a Slicer .seg.nrrd, and in an ITK-SNAP label file beside
        NIfTI / NRRD maps (`segmote.io.LabelInfo`).
    """

    backbone: str = "litemedsam"
    checkpoint: str | Path | None = None
    adapter: str | Path | None = "default"
    modality: str | None = None
    window: str | None = None
    axis: int = 2
    overlay: str | Path | None = None
    device: str = "cpu"
    progress: bool = False
    routing: bool = False
    attention: str | Path | None = None
    text: str | None = None
    auto: bool = False
    classes: Sequence[str] | None = None
    threshold: float | None = None
    every_slice: bool = False
    propagate: bool = False
    key_slice: int | None = None
    min_slices: int = 2
    label_names: Mapping[int, str] = field(default_factory=dict)


@dataclass
class PredictResult:
    """output: the label file written; label: the label map; summary: one line for the user;
    routing: with routing=True, one `segmote.routing.routing_table` row per decoded prompt plus
    "label" (the object's output label) and "slice" (volume slice index, None for 2-D);
    attention: the expert-attention PNG written, if asked for."""

    output: Path
    label: np.ndarray
    summary: str
    routing: list[dict] = field(default_factory=list)
    attention: Path | None = None
    classes: dict[int, str] = field(default_factory=dict)
    # automatic mode without named classes: the modality whose training classes were asked
    # (None: every class the adapter knows)
    auto_modality: str | None = None
    # automatic mode: the adapter has a class presence head (it drops classes the image cannot
    # hold, `segmote.modeling.presence`)
    auto_presence: bool = False
    # propagated volumes: per object, slice -> the model's predicted IoU of that slice's mask
    slice_scores: list[dict[int, float]] = field(default_factory=list)


def _tqdm(desc: str) -> Progress:
    from tqdm import tqdm  # only when a bar is asked for
    return lambda it: tqdm(it, desc=desc, unit="slice", leave=False)


def predict_file(input_path: str | Path, output: str | Path,
                 objects: Sequence[ObjectPrompt] | PromptNumbers = (),
                 options: PredictOptions | None = None) -> PredictResult:
    """Read an image or volume, segment every object (or, prompt-free, every class asked),
    write a label map with the input's geometry (and the figures asked for).

    objects: `ObjectPrompt`s in the image's coordinates, or `PromptNumbers` read once the
        image is known; none for prompt-free modes (options.text alone or options.auto).
    """
    opts = options or PredictOptions()
    LabelInfo(opts.label_names)  # check the names before any work
    data = read_image(input_path)
    out_path = output_path_for(data, output)
    numbers = objects if isinstance(objects, PromptNumbers) else None
    prompted = bool(objects)
    check_text(opts.text)
    if opts.auto and prompted:
        raise ParameterError("auto", "{auto} segments without prompts: drop {box} / {point} "
                             "(or {auto})")
    if opts.classes is not None and not opts.auto:
        raise ParameterError("classes", "{classes} goes with {auto}")
    _check_volume_options(data, opts)
    if opts.text is not None and not prompted:
        value = numbers.labels[0] if numbers is not None and numbers.labels else None
        return _predict_auto(data, out_path, [opts.text], opts, value)
    if opts.auto:
        return _predict_auto(data, out_path, opts.classes, opts, None)
    depth = data.array.shape[opts.axis] if data.is_volume else 1
    objs = numbers.to_objects(data.is_volume, depth) if numbers is not None else list(objects)
    check_objects(objs, data.array.shape, data.is_volume)
    return _predict_prompted(data, out_path, objs, opts)


def _model_for(opts: PredictOptions, auto: bool):
    """Check what is cheap to check, then load the model."""
    modality = normalize_modality(opts.modality)
    parse_window(opts.window)  # validate before the model loads
    check_png(opts.overlay, "overlay")
    adapter = None if opts.adapter in ("none", "None") else opts.adapter
    if auto and adapter is None:
        raise ParameterError("adapter", "{auto} / {text} need a SegMoTE adapter trained with "
                             "PPT and text")
    check_png(opts.attention, "attention")
    dev = resolve_device(opts.device)
    return modality, load_model(opts.backbone, opts.checkpoint, adapter=adapter, device=dev)


def _shown_slice(data: ImageData, first: ObjectPrompt, axis: int) -> int | None:
    """The slice the overlay and attention figure show: the middle of the first object."""
    if not data.is_volume:
        return None
    if first.box:
        return int(round((first.box[axis] + first.box[axis + 3]) / 2))
    return int(round(first.points[0][axis]))


def _predict_prompted(data: ImageData, out_path: Path, objects: list[ObjectPrompt],
                      opts: PredictOptions) -> PredictResult:
    """`predict_file` with prompts."""
    modality, model = _model_for(opts, auto=False)
    modality = modality or guess_modality(data)
    if (opts.routing or opts.attention is not None) and not isinstance(model, SegMoTE):
        param = "routing" if opts.routing else "attention"
        raise ParameterError(param, f"{{{param}}} shows the SegMoTE router, but the model has "
                             "no adapter (give {adapter} PATH, or {adapter} new for an untrained "
                             "one)")
    seg = Segmenter(model)
    k_show = _shown_slice(data, objects[0], opts.axis)
    rows: list[dict] = []
    shown: dict = {}

    def record(n: int, k: int | None, pred) -> None:
        if opts.routing:
            rows.append({"label": objects[n].label, "slice": k, **routing_table(pred.extras)[0]})
        if opts.attention is not None and n == 0 and k == k_show:
            shown["attention"] = pred.extras["attention"][0].cpu()
            shown["geometry"] = seg.geometry

    rec = record if opts.routing or opts.attention is not None else None
    kw = dict(record=rec, text=opts.text, attention=opts.attention is not None)
    scores: list[dict[int, float]] = []
    if data.is_volume and _propagated(objects, opts):
        label, scores = propagate_objects(
            seg, data.array, objects, axis=opts.axis, modality=modality, window=opts.window,
            key_slice=opts.key_slice, follow=opts.propagate, record=rec,
            **_decode(opts.text, opts.attention is not None))
        # propagation visits the key slice first: the table goes by object, then slice
        order = {obj.label: n for n, obj in enumerate(objects)}
        rows.sort(key=lambda r: (order[r["label"]], r["slice"]))
    elif data.is_volume:
        label = segment_volume(seg, data, objects, opts.axis, modality, opts.window,
                               _tqdm("slices") if opts.progress else None, **kw)
    else:
        label = segment_image(seg, data, objects, modality, opts.window, **kw)
    names = {obj.label: opts.text for obj in objects} if opts.text is not None else {}
    info = LabelInfo({**names, **opts.label_names})
    written = write_label(label, data, out_path, info)
    image = volume_slice(data.array, k_show, opts.axis) if data.is_volume else data.array
    if opts.overlay is not None:
        shown_label = volume_slice(label, k_show, opts.axis) if data.is_volume else label
        save_overlay(image, shown_label, opts.overlay)
    att_path = None
    if opts.attention is not None:
        att_path = save_attention_png(image, shown["attention"], opts.attention,
                                      shown["geometry"])
    counts = {int(v): int(c) for v, c in zip(*np.unique(label, return_counts=True)) if v}
    summary = f"shape {label.shape}, modality {modality or 'none'}, voxels per label {counts}"
    if scores:
        summary += f", slices per object {[len(s) for s in scores]}"
    return PredictResult(written, label, summary, rows, att_path, slice_scores=scores)


def _check_volume_options(data: ImageData, opts: PredictOptions) -> None:
    if (opts.propagate or opts.key_slice is not None) and not data.is_volume:
        param = "propagate" if opts.propagate else "key_slice"
        raise ParameterError(param, f"{data.path}: {{{param}}} follows an object through a "
                             "volume; this image is 2-D")
    if opts.every_slice and (opts.propagate or opts.key_slice is not None):
        raise ParameterError("every_slice", "{every_slice} prompts every slice: drop "
                             "{propagate} / {key_slice}")
    if opts.min_slices < 1:
        raise ParameterError("min_slices", f"{{min_slices}} {opts.min_slices}: must be at "
                             "least 1")


def _propagated(objects: list[ObjectPrompt], opts: PredictOptions) -> bool:
    """Follow the objects from a key slice? (A 3-D box with k0 < k1 is, by default.)"""
    if opts.every_slice:
        return False
    return opts.propagate or opts.key_slice is not None or any(
        o.box is not None and o.box[opts.axis] < o.box[opts.axis + 3] for o in objects)


def _predict_auto(data: ImageData, out_path: Path, classes: Sequence[str] | None,
                  opts: PredictOptions, value: int | None) -> PredictResult:
    """`predict_file` without prompts: PPT per class (`segmote.predict.volume.auto_volume`).
    value: the label value of a single class asked by text (default 1)."""
    if value is not None:
        check_label_value(value)
    modality, model = _model_for(opts, auto=True)
    modality = modality or guess_modality(data)
    seg = Segmenter(model)
    if not seg.prompt_free or not seg.takes_text:
        raise ParameterError("adapter", "this adapter was trained without PPT / text prompts: "
                             "it cannot segment without a box or points (train one with "
                             "segmote train)")
    by_modality = None if classes else seg.card.classes_for_modality(modality)
    names = list(classes) if classes else by_modality or seg.vocabulary
    progress = _tqdm("slices") if opts.progress else None
    if data.is_volume:
        label, names, _ = auto_volume(seg, data, names, opts.axis, modality, opts.window,
                                      opts.threshold, progress)
        label = drop_thin_components(label, opts.axis, opts.min_slices)
        other = tuple(a for a in range(3) if a != opts.axis)
        on_slices = [int((label == i + 1).any(axis=other).sum()) for i in range(len(names))]
        found = {n: f"{k} slices" for n, k in zip(names, on_slices) if k}
    else:
        pred = auto_image(seg, data.array, names, modality, opts.window, opts.threshold)
        label, names = pred.label_map, pred.classes
        found = {n: f"confidence {pred.confidence[n]:.2f}" for n in names if pred.kept[n]}
    mapping = {i + 1: n for i, n in enumerate(names)}
    if value is not None:  # one class asked by text: write it with the label value asked
        label = np.where(label > 0, value, 0).astype(np.uint8 if value < 256 else np.uint16)
        mapping = {value: names[0]}
    info = LabelInfo({**mapping, **opts.label_names}, automatic=True)
    written = write_label(label, data, out_path, info)
    if opts.overlay is not None and data.is_volume:  # the middle slice
        k = data.array.shape[opts.axis] // 2
        save_overlay(volume_slice(data.array, k, opts.axis), volume_slice(label, k, opts.axis),
                     opts.overlay)
    elif opts.overlay is not None:
        save_overlay(data.array, label, opts.overlay)
    value_of = {name: v for v, name in mapping.items()}
    listed = ", ".join(f"{value_of[n]}={n} ({why})" for n, why in found.items())
    asked = f" (the adapter's {modality} classes)" if by_modality else ""
    summary = (f"shape {label.shape}, modality {modality or 'none'}, prompt-free, "
               f"{len(found)} of {len(names)} classes{asked} found"
               + (f": {listed}" if listed else ""))
    return PredictResult(written, label, summary, classes=mapping,
                         auto_modality=modality if by_modality else None,
                         auto_presence=seg.has_presence)
