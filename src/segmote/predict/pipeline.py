"""`predict_file`: typed prompts and options in, a label map (and figures) out.

    objects = [ObjectPrompt(box=(83, 93, 0, 173, 162, 14))]
    result = predict_file("ct.nii.gz", "seg.nii.gz", objects, PredictOptions(modality="CT"))

Every input is checked before any model work and nothing is written unless everything
succeeded. The way of a request: read the image (`segmote.io`), check the prompts
(`prompts`), load the model (`segmote.build`), segment slice by slice (`volume`, on
`Segmenter` / `AutoSegmenter`), write the label map with the input's geometry and the figures.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmote.adapter import read_adapter_card
from segmote.batching import check_batch_size
from segmote.build import DEFAULT_ADAPTER, load_model, resolve_device
from segmote.errors import InputError, ParameterError, SegmoteError
from segmote.io import ImageData, LabelInfo, output_path_for, read_image, write_label
from segmote.io.finite import finite_image, finite_mask
from segmote.io.image import split_ext
from segmote.io.writers import label_names_path
from segmote.outputs import check_outputs, written_together
from segmote.modeling.segmote import SegMoTE
from segmote.overlay import check_png, save_overlay
from segmote.precision import autocast, check_precision, default_precision
from segmote.predict.options import PredictOptions, PredictResult
from segmote.predict.batched import EncodedSlices, auto_volume_batched, segment_volume_batched
from segmote.predict.prompts import (ObjectPrompt, PromptNumbers, check_known_classes,
                                     check_label_value, check_objects, check_text)
from segmote.predict.propagation import drop_thin_components, propagate_objects
from segmote.predict.segmenter import Segmenter
from segmote.predict.volume import (Progress, auto_image, decode_arguments,
                                    guess_modality, segment_image)
from segmote.routing import routing_table, save_attention_png
from segmote.slicing import volume_slice
from segmote.intensity import normalize_modality, parse_window


def _tqdm(desc: str) -> Progress:
    from tqdm import tqdm  # only when a bar is asked for
    return lambda it: tqdm(it, desc=desc, unit="slice", leave=False)


class ModelCache:
    """Keeps the model of the last `predict_file` call given this cache for the next call that
    asks for the same one (the same `load_model` arguments), so a folder of cases loads its
    model once, not once per case (~0.8 s each on a CPU). A call asking for another model
    replaces it (one model in memory)."""

    def __init__(self) -> None:
        self._key: tuple[tuple[str, str], ...] | None = None
        self._model: Any = None

    def load(self, **kwargs: Any) -> Any:
        """`segmote.build.load_model(**kwargs)`, or the model it returned last time."""
        key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        if key != self._key:
            self._model = self._key = None  # free the old model before the new one loads
            self._model, self._key = load_model(**kwargs), key
        return self._model


def predict_file(input_path: str | Path, output: str | Path,
                 objects: Sequence[ObjectPrompt] | PromptNumbers = (),
                 options: PredictOptions | None = None,
                 models: ModelCache | None = None) -> PredictResult:
    """Read an image or volume, segment every object (or, prompt-free, every class asked),
    write a label map with the input's geometry (and the figures asked for).

    objects: `ObjectPrompt`s in the image's coordinates, or `PromptNumbers` read once the
        image is known; none for prompt-free modes (options.text alone or options.auto).
    models: reuse the model loaded by an earlier call given the same cache (None: load it).
    """
    opts = options or PredictOptions()
    LabelInfo(opts.label_names)  # check the names before any work
    data = finite_image(read_image(input_path, series=opts.series))
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
    prompt_free = opts.auto or (opts.text is not None and not prompted)
    for param, asked in (("routing", opts.routing), ("attention", opts.attention is not None)):
        if asked and prompt_free:
            raise ParameterError(param, f"{{{param}}} shows the router of prompted objects; "
                                 "prompt-free segmentation ({auto}, or {text} alone) has none")
    _check_classes(opts, prompted)
    _warn_if_constant(data)
    if prompt_free:
        value = numbers.labels[0] if numbers is not None and numbers.labels else None
        outputs = _check_outputs(input_path, data, out_path, opts)
        classes = [opts.text] if opts.text is not None else opts.classes
        return _predict_auto(data, outputs, classes, opts, value, models)
    depth = data.array.shape[opts.axis] if data.is_volume else 1
    objs = numbers.to_objects(data.is_volume, depth) if numbers is not None else list(objects)
    check_objects(objs, data.array.shape, data.is_volume, opts.axis)
    return _predict_prompted(data, _check_outputs(input_path, data, out_path, opts), objs, opts,
                             models)


def _check_outputs(input_path: str | Path, data: ImageData, out_path: Path,
                   opts: PredictOptions) -> dict[str, Path]:
    """Every output (label map, overlay, attention figure) differs from the inputs and from
    each other, can be written and fits the free space; checked before the model loads.
    Returns role -> path."""
    outputs = {"label map": out_path}
    if opts.auto or opts.text is not None or opts.label_names:  # names: written beside it
        outputs["label names file"] = label_names_path(out_path)
    for role, path in (("overlay", opts.overlay), ("attention figure", opts.attention)):
        if path is not None:
            outputs[role] = Path(path)
    inputs = {"input image": [Path(input_path), *map(Path, data.meta.get("files", []))],
              "adapter": [Path(opts.adapter)] if opts.adapter not in
              (None, "none", "None", "default", "new") else [],
              "checkpoint": [Path(opts.checkpoint)] if opts.checkpoint else []}
    plane = int(np.prod(data.array.shape[:2]))
    need = 2 * data.array.size + 4 * plane * 2  # uint16 labels, two RGBA figures at most
    check_outputs(outputs, inputs, need_bytes=need)
    return outputs


def _write_outputs(outputs: dict[str, Path], label: np.ndarray, data: ImageData,
                   info: LabelInfo, figures: dict[str, Callable[[Path], object]]) -> None:
    """The figures go to temporary files first, then the label map (with its label-names file
    and detached data file, which `write_label` writes atomically itself); the figures are
    renamed into place only once the label map is written. A full disk or a read-only folder
    anywhere on the way leaves none of them behind, and a label map that was there before
    comes back if a figure's rename fails after the label map was written."""
    roles = list(figures)
    paths = [outputs[r] for r in roles]
    own = [outputs[r] for r in ("label map", "label names file") if r in outputs]
    with written_together(paths, [split_ext(p)[1] or ".tmp" for p in paths], own) as tmps:
        try:
            for role, tmp in zip(roles, tmps):
                figures[role](tmp)
        except OSError as err:
            raise InputError(f"{outputs['label map']}: cannot write the outputs "
                             f"({err.strerror or err})") from None
        write_label(label, data, outputs["label map"], info)


def _check_classes(opts: PredictOptions, prompted: bool) -> None:
    """Class names the adapter does not know are refused before the model loads (the
    vocabulary is in the adapter file's header)."""
    names = list(opts.classes or []) + ([opts.text] if opts.text is not None else [])
    if not names or opts.adapter in (None, "none", "None", "new"):
        return
    path = DEFAULT_ADAPTER if opts.adapter == "default" else opts.adapter
    if opts.adapter == "default" and opts.backbone != "litemedsam":
        return
    try:
        vocabulary = read_adapter_card(path).vocabulary or ()
    except SegmoteError:
        return  # loading the adapter will say what is wrong with the file
    check_known_classes(list(opts.classes or []), vocabulary, "classes")
    if opts.text is not None:
        check_known_classes([opts.text], vocabulary, "text")


def _warn_if_constant(data: ImageData) -> None:
    """A constant image holds nothing to segment: whatever comes out follows the prompt."""
    if data.array.size and data.array.min() == data.array.max():
        warnings.warn(f"{data.path}: the image is constant (every value is "
                      f"{data.array.flat[0]:g}); there is nothing to segment, masks follow the "
                      "prompts alone", stacklevel=3)


def _model_for(opts: PredictOptions, auto: bool, models: ModelCache | None = None):
    """Check what is cheap to check, then load the model (or take it from `models`)."""
    modality = normalize_modality(opts.modality)
    parse_window(opts.window)  # validate before the model loads
    check_png(opts.overlay, "overlay")
    adapter = None if opts.adapter in ("none", "None") else opts.adapter
    if auto and adapter is None:
        raise ParameterError("adapter", "{auto} / {text} need a SegMoTE adapter trained with "
                             "PPT and text")
    check_png(opts.attention, "attention")
    dev = resolve_device(opts.device)
    check_batch_size(opts.batch_size, dev)
    check_precision(opts.precision or default_precision(dev))
    if opts.threads is not None:
        if opts.threads < 1:
            raise ParameterError("threads", f"{{threads}} {opts.threads}: expected >= 1")
        torch.set_num_threads(opts.threads)
    # the engine's encoder stays fp32 whatever {precision} says (that is PyTorch's autocast):
    # OpenVINO bf16 moved Dice by up to 0.014 on the faithfulness rows (docs/engine.md), over
    # the 0.005 it may cost to be offered
    load = models.load if models is not None else load_model
    return modality, load(backbone=opts.backbone, checkpoint=opts.checkpoint, adapter=adapter,
                          device=dev, engine=opts.engine, threads=opts.threads)


def _autocast(opts: PredictOptions, model) -> Any:
    """The precision context of the model work (`PredictOptions.precision`)."""
    return autocast(opts.precision or default_precision(model.device), model.device)


def _shown_slice(data: ImageData, first: ObjectPrompt, axis: int) -> int | None:
    """The slice the overlay and attention figure show: the middle of the first object."""
    if not data.is_volume:
        return None
    if first.box:
        return int(round((first.box[axis] + first.box[axis + 3]) / 2))
    return int(round(first.points[0][axis]))


def _predict_prompted(data: ImageData, outputs: dict[str, Path], objects: list[ObjectPrompt],
                      opts: PredictOptions, models: ModelCache | None) -> PredictResult:
    """`predict_file` with prompts."""
    modality, model = _model_for(opts, auto=False, models=models)
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
    with _autocast(opts, model):
        if data.is_volume and _propagated(objects, opts):
            valid = finite_mask(data)
            # the slices each object will visit, encoded ahead opts.batch_size at a time
            with EncodedSlices(seg, data.array, opts.axis, modality, opts.window,
                               opts.batch_size, valid=valid) as slices:
                label, scores = propagate_objects(
                    seg, data.array, objects, axis=opts.axis, modality=modality,
                    window=opts.window, key_slice=opts.key_slice, follow=opts.propagate,
                    record=rec, valid=valid, spacing=data.spacing, slices=slices,
                    **decode_arguments(opts.text, opts.attention is not None))
            # propagation visits the key slice first: the table goes by object, then slice
            order = {obj.label: n for n, obj in enumerate(objects)}
            rows.sort(key=lambda r: (order[r["label"]], r["slice"]))
        elif data.is_volume:
            label = segment_volume_batched(seg, data, objects, opts.axis, modality, opts.window,
                                           _tqdm("slices") if opts.progress else None,
                                           batch_size=opts.batch_size, **kw)
        else:
            label = segment_image(seg, data, objects, modality, opts.window, **kw)
    names = {obj.label: opts.text for obj in objects} if opts.text is not None else {}
    info = LabelInfo({**names, **opts.label_names})
    image = volume_slice(data.array, k_show, opts.axis) if data.is_volume else data.array
    shown_label = volume_slice(label, k_show, opts.axis) if data.is_volume else label
    figures = {"overlay": lambda path: save_overlay(image, shown_label, path),
               "attention figure": lambda path: save_attention_png(
                   image, shown["attention"], path, shown["geometry"])}
    _write_outputs(outputs, label, data, info,
                   {r: f for r, f in figures.items() if r in outputs})
    att_path = outputs.get("attention figure")
    counts = {int(v): int(c) for v, c in zip(*np.unique(label, return_counts=True)) if v}
    summary = f"shape {label.shape}, modality {modality or 'none'}, voxels per label {counts}"
    if scores:
        summary += f", slices per object {[len(s) for s in scores]}"
    return PredictResult(outputs["label map"], label, summary, rows, att_path,
                         slice_scores=scores)


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


def _predict_auto(data: ImageData, outputs: dict[str, Path], classes: Sequence[str] | None,
                  opts: PredictOptions, value: int | None,
                  models: ModelCache | None) -> PredictResult:
    """`predict_file` without prompts: PPT per class (`segmote.predict.volume.auto_volume`).
    value: the label value of a single class asked by text (default 1)."""
    if value is not None:
        check_label_value(value)
    modality, model = _model_for(opts, auto=True, models=models)
    modality = modality or guess_modality(data)
    seg = Segmenter(model)
    if not seg.prompt_free or not seg.takes_text:
        raise ParameterError("adapter", "this adapter was trained without PPT / text prompts: "
                             "it cannot segment without a box or points (train one with "
                             "segmote train)")
    by_modality = None if classes else seg.card.classes_for_modality(modality)
    names = list(classes) if classes else by_modality or seg.vocabulary
    progress = _tqdm("slices") if opts.progress else None
    with _autocast(opts, model):
        if data.is_volume:
            label, names, _ = auto_volume_batched(seg, data, names, opts.axis, modality,
                                                  opts.window, opts.threshold, progress,
                                                  opts.batch_size)
            label = drop_thin_components(label, opts.axis, opts.min_slices)
            other = tuple(a for a in range(3) if a != opts.axis)
            on_slices = [int((label == i + 1).any(axis=other).sum()) for i in range(len(names))]
            found = {n: f"{k} slices" for n, k in zip(names, on_slices) if k}
        else:
            pred = auto_image(seg, data.array, names, modality, opts.window, opts.threshold,
                              finite_mask(data))
            label, names = pred.label_map, pred.classes
            found = {n: f"confidence {pred.confidence[n]:.2f}" for n in names if pred.kept[n]}
    mapping = {i + 1: n for i, n in enumerate(names)}
    if value is not None:  # one class asked by text: write it with the label value asked
        label = np.where(label > 0, value, 0).astype(np.uint8 if value < 256 else np.uint16)
        mapping = {value: names[0]}
    info = LabelInfo({**mapping, **opts.label_names}, automatic=True)
    if data.is_volume:  # the overlay shows the middle slice
        k = data.array.shape[opts.axis] // 2
        image, shown = volume_slice(data.array, k, opts.axis), volume_slice(label, k, opts.axis)
    else:
        image, shown = data.array, label
    figures = {"overlay": lambda path: save_overlay(image, shown, path)}
    _write_outputs(outputs, label, data, info,
                   {r: f for r, f in figures.items() if r in outputs})
    value_of = {name: v for v, name in mapping.items()}
    listed = ", ".join(f"{value_of[n]}={n} ({why})" for n, why in found.items())
    asked = f" (the adapter's {modality} classes)" if by_modality else ""
    summary = (f"shape {label.shape}, modality {modality or 'none'}, prompt-free, "
               f"{len(found)} of {len(names)} classes{asked} found"
               + (f": {listed}" if listed else ""))
    return PredictResult(outputs["label map"], label, summary, classes=mapping,
                         auto_modality=modality if by_modality else None,
                         auto_presence=seg.has_presence)
