"""High-level typed functions behind the CLI (usable from Python too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from segmote.errors import InputError


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


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _tqdm(total_desc: str):
    from tqdm import tqdm
    return lambda it: tqdm(it, desc=total_desc, unit="slice", leave=False)


def predict_file(input_path: str | Path, output: str | Path, boxes: Sequence[str] = (),
                 points: Sequence[str] = (), labels: Sequence[int] = (),
                 backbone: str = "litemedsam", checkpoint: str | Path | None = None,
                 adapter: str | Path | None = "default", modality: str | None = None,
                 window: str | None = None, axis: int = 2, overlay: str | Path | None = None,
                 device: str = "cpu", progress: bool = False, routing: bool = False,
                 attention: str | Path | None = None, text: str | None = None,
                 auto: bool = False, classes: Sequence[str] | None = None,
                 threshold: float | None = None, every_slice: bool = False,
                 propagate: bool = False, key_slice: int | None = None,
                 min_slices: int = 2) -> PredictResult:
    """Read an image or volume, segment every prompted object, write a label map with the input's
    geometry (and optionally an overlay PNG). All inputs are checked before any model work and
    nothing is written unless everything succeeded.

    routing: collect the SegMoTE router's choice for every prompt (`PredictResult.routing`).
    attention: write the expert tokens' attention maps for the first object as a PNG (for a
        volume: on the middle slice of its range, like the overlay). Both need an adapter.
    text: a class name; beside boxes / points it is given with every object; alone it asks for
        prompt-free segmentation of that class (like auto with classes=[text]).
    auto: prompt-free segmentation of `classes` (default: every class the adapter knows) into
        one label map, value i = i-th class; every slice of a volume. threshold: confidence
        needed to keep a class's mask (default: the adapter's calibrated one).
    Volumes (`segmote.predict.propagation`): a 3-D box with k0 < k1 is followed from its middle
    slice (or `key_slice`) inside its slices, unless `every_slice` (each slice of the range
    prompted with the box); a one-slice prompt is followed until the object ends when
    `propagate`, else only its slice is segmented. Prompt-free volumes keep only 3-D
    components on at least `min_slices` slices.
    """
    from segmote.build import load_model
    from segmote.cli.predict import parse_objects
    from segmote.inference import (check_prompts, guess_modality, segment_image, segment_volume,
                                   volume_slice)
    from segmote.io import output_path_for, read_image, write_label
    from segmote.overlay import save_overlay
    from segmote.modeling.segmote import SegMoTE
    from segmote.predictor import Segmenter
    from segmote.routing import routing_table, save_attention_png
    from segmote.transforms import normalize_modality, parse_window

    data = read_image(input_path)
    out_path = output_path_for(data, output)
    depth = data.array.shape[axis] if data.is_volume else 1
    prompted = bool(boxes or points)
    if text is not None and not text.strip():
        raise InputError("--text: empty class name")
    if auto and prompted:
        raise InputError("--auto segments without prompts: drop --box / --point (or --auto)")
    if classes is not None and not auto:
        raise InputError("--classes goes with --auto")
    if text is not None and not prompted:
        auto, classes = True, [text]
    if (propagate or key_slice is not None) and not data.is_volume:
        raise InputError(f"{input_path}: --propagate / --key-slice follow an object through a "
                         "volume; this image is 2-D")
    if every_slice and (propagate or key_slice is not None):
        raise InputError("--every-slice prompts every slice: drop --propagate / --key-slice")
    if min_slices < 1:
        raise InputError(f"--min-slices {min_slices}: must be at least 1")
    if auto:
        return _predict_auto(data, out_path, classes, backbone, checkpoint, adapter, modality,
                             window, axis, overlay, device, progress, threshold,
                             labels[0] if labels and text is not None else None, min_slices)
    objects = parse_objects(list(boxes), list(points), list(labels), data.is_volume, depth)
    check_prompts(objects, data.array.shape, data.is_volume)
    modality = normalize_modality(modality) or guess_modality(data)
    parse_window(window)  # validate before the model loads
    for flag, png in (("--overlay", overlay), ("--attention", attention)):
        if png is not None and Path(png).suffix.lower() != ".png":
            raise InputError(f"{png}: {flag} must be a .png file")
    dev = resolve_device(device)
    if adapter in ("none", "None"):
        adapter = None
    model = load_model(backbone, checkpoint, adapter=adapter, device=dev)
    if (routing or attention is not None) and not isinstance(model, SegMoTE):
        flag = "--routing" if routing else "--attention"
        raise InputError(f"{flag} shows the SegMoTE router, but the model has no adapter "
                         "(give --adapter PATH, or --adapter new for an untrained one)")
    seg = Segmenter(model)
    first = objects[0]
    k_show = None  # the slice the overlay and attention figure show
    if data.is_volume:
        k_show = int(round((first.box[axis] + first.box[axis + 3]) / 2)) if first.box else \
            int(round(first.points[0][axis]))
    rows: list[dict] = []
    shown: dict = {}

    def record(n: int, k: int | None, pred) -> None:
        if routing:
            row = routing_table(pred.extras)[0]
            rows.append({"label": objects[n].label, "slice": k, **row})
        if attention is not None and n == 0 and k == k_show:
            shown["attention"] = pred.extras["attention"][0].cpu()
            shown["geometry"] = seg.geometry

    kw: dict = {"return_attention": True} if attention is not None else {}
    if text is not None:
        kw["text"] = text
    rec = record if routing or attention is not None else None
    scores: list[dict[int, float]] = []
    if data.is_volume and _propagated(objects, axis, every_slice, propagate, key_slice):
        from segmote.predict.propagation import propagate_objects
        label, scores = propagate_objects(seg, data.array, objects, axis=axis,
                                          modality=modality, window=window,
                                          key_slice=key_slice, follow=propagate, record=rec,
                                          **kw)
        # propagation visits the key slice first: the table goes by object, then slice
        order = {obj.label: n for n, obj in enumerate(objects)}
        rows.sort(key=lambda r: (order[r["label"]], r["slice"]))
    elif data.is_volume:
        label = segment_volume(seg, data, objects, axis, modality, window,
                               _tqdm("slices") if progress else None, record=rec, **kw)
    else:
        label = segment_image(seg, data, objects, modality, window, record=rec, **kw)
    written = write_label(label, data, out_path)
    image = volume_slice(data.array, k_show, axis) if data.is_volume else data.array
    if overlay is not None:
        shown_label = volume_slice(label, k_show, axis) if data.is_volume else label
        save_overlay(image, shown_label, overlay)
    att_path = None
    if attention is not None:
        att_path = save_attention_png(image, shown["attention"], attention, shown["geometry"])
    counts = {int(v): int(c) for v, c in zip(*np.unique(label, return_counts=True)) if v}
    summary = f"shape {label.shape}, modality {modality or 'none'}, voxels per label {counts}"
    if scores:
        summary += ", slices per object " + str([len(s) for s in scores])
    return PredictResult(written, label, summary, rows, att_path, slice_scores=scores)


def _propagated(objects: list, axis: int, every_slice: bool, propagate: bool,
                key_slice: int | None) -> bool:
    """Follow the objects from a key slice (a 3-D box with k0 < k1 does by default)?"""
    if every_slice:
        return False
    return propagate or key_slice is not None or any(
        o.box is not None and o.box[axis] < o.box[axis + 3] for o in objects)


def _predict_auto(data, out_path: Path, classes: Sequence[str] | None, backbone: str,
                  checkpoint, adapter, modality: str | None, window: str | None, axis: int,
                  overlay, device: str, progress: bool, threshold: float | None,
                  value: int | None, min_slices: int = 2) -> PredictResult:
    """`predict_file` without prompts: PPT per class (see `segmote.inference.auto_volume`)."""
    from segmote.build import load_model
    from segmote.inference import auto_image, auto_volume, guess_modality, volume_slice
    from segmote.io import write_label
    from segmote.overlay import save_overlay
    from segmote.predictor import Segmenter
    from segmote.transforms import normalize_modality, parse_window

    modality = normalize_modality(modality) or guess_modality(data)
    parse_window(window)
    if overlay is not None and Path(overlay).suffix.lower() != ".png":
        raise InputError(f"{overlay}: --overlay must be a .png file")
    if value is not None and not 0 < value < 65536:
        raise InputError(f"--label {value}: must be between 1 and 65535")
    if adapter in ("none", "None"):
        raise InputError("--auto / --text need a SegMoTE adapter trained with PPT and text")
    model = load_model(backbone, checkpoint, adapter=adapter, device=resolve_device(device))
    seg = Segmenter(model)
    if not seg.prompt_free or not seg.takes_text:
        raise InputError("this adapter was trained without PPT / text prompts: it cannot "
                         "segment without a box or points (train one with segmote train)")
    by_modality = None if classes else seg.classes_for_modality(modality)
    names = list(classes) if classes else by_modality or seg.vocabulary
    if data.is_volume:
        from segmote.predict.propagation import drop_thin_components
        label, names, _ = auto_volume(seg, data, names, axis, modality, window, threshold,
                                      _tqdm("slices") if progress else None)
        label = drop_thin_components(label, axis, min_slices)
        other = tuple(a for a in range(3) if a != axis)
        found = {n: f"{k} slices" for i, n in enumerate(names)
                 if (k := int((label == i + 1).any(axis=other).sum()))}
    else:
        pred = auto_image(seg, data.array, names, modality, window, threshold)
        label, names = pred.label_map, pred.classes
        found = {n: f"confidence {pred.confidence[n]:.2f}" for n in names if pred.kept[n]}
    mapping = {i + 1: n for i, n in enumerate(names)}
    if value is not None:  # one class asked by --text: write it with the --label value
        label = np.where(label > 0, value, 0).astype(np.uint8 if value < 256 else np.uint16)
        mapping = {value: names[0]}
    written = write_label(label, data, out_path)
    if overlay is not None:
        k = data.array.shape[axis] // 2
        image = volume_slice(data.array, k, axis) if data.is_volume else data.array
        save_overlay(image, volume_slice(label, k, axis) if data.is_volume else label, overlay)
    value_of = {name: value for value, name in mapping.items()}
    listed = ", ".join(f"{value_of[n]}={n} ({why})" for n, why in found.items())
    asked = f" (the adapter's {modality} classes)" if by_modality else ""
    summary = (f"shape {label.shape}, modality {modality or 'none'}, prompt-free, "
               f"{len(found)} of {len(names)} classes{asked} found"
               + (f": {listed}" if listed else ""))
    return PredictResult(written, label, summary, classes=mapping,
                         auto_modality=modality if by_modality else None,
                         auto_presence=seg.has_presence)
