"""3-D prompt protocols: segment a whole object of a volume and score it in 3-D (Dice, NSD, HD95).

Every prompt comes from the ground-truth object and a seed keyed by (dataset, case, class), so
each protocol gives identical prompts in every run and for every model compared:

- ``box3d``: the object's 3-D bounding box with each of its six sides moved by up to `jitter` x
  the box extent (at least one voxel), in or out (`simulated_prompts.jittered_box`'s rule); the
  key slice is the middle of the box's k-range and the object is followed from there inside
  the k-range (`segmote.predict.propagation`);
- ``box3d_every_slice``: the same box, every slice of its k-range prompted with its in-plane box
  (segmote's behaviour before propagation);
- ``key_box``: a jittered box on the slice with the most foreground, followed until the object
  ends (no k-limits);
- ``key_point``: one positive click at the deepest foreground pixel of that slice, followed
  until the object ends.

Slice features come from an `EmbeddingCache` (each slice encoded once for all protocols and
models). A `SegMoTE` model is scored twice, as its own output ("adapter") and the frozen base
decoder's ("base"): each follows its own masks from slice to slice.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segmote.data.datasets import SliceSample
from segmote.evaluation.metrics import case_metrics, image_diagonal_mm
from segmote.evaluation.prompted import PromptResult, Protocol, deepest_point
from segmote.slicing import set_volume_slice, volume_slice
from segmote.predict.propagation import DEFAULT_CONFIG, PropagationConfig, propagate
from segmote.predict.segmenter import Segmenter
from segmote.simulated_prompts import jittered_box

PROMPTS_3D = ("box3d", "box3d_every_slice", "key_box", "key_point")


@dataclass(frozen=True)
class VolumeCase:
    """One object of one volume: the voxels of `class_value` in the case's label map."""

    dataset: str
    case_id: str
    image: Any  # Path
    label: Any  # Path
    class_value: int
    class_name: str
    modality: str | None


def volume_cases(datasets: list[Any], split: dict[str, Any], parts: Iterable[str],
                 classes: Iterable[str] | None = None) -> list[VolumeCase]:
    """Every (case, class) of the 3-D datasets' `parts` of the split whose class is present
    (optionally only the named `classes`)."""
    from segmote.data.files import read_label

    wanted = None if classes is None else set(classes)
    out = []
    for d in datasets:
        if not d.is_3d or d.instance_labels:
            continue
        by_id = {c.case_id: c for c in d.cases}
        for part in parts:
            for case_id in split.get(d.name, {}).get(part, []):
                case = by_id[case_id]
                present = set(np.unique(read_label(case.label)).tolist())
                out += [VolumeCase(d.name, case_id, case.image, case.label, v, name, d.modality)
                        for v, name in d.labels.items()
                        if v in present and (wanted is None or name in wanted)]
    return out


def case_seed(seed: int, case: VolumeCase) -> np.random.Generator:
    """A generator keyed by the object, not by the evaluation order."""
    key = f"{case.dataset}/{case.case_id}/3d/{case.class_value}"
    digest = hashlib.sha256(key.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def jittered_box3d(gt: np.ndarray, rng: np.random.Generator, jitter: float,
                   axis: int = 2) -> tuple[tuple[float, ...], tuple[int, int]]:
    """The jittered 3-D box of an (X, Y, Z) mask: ((x0, y0, x1, y1) in slice pixels, (k0, k1))."""
    in_plane = volume_slice(gt.any(axis=axis, keepdims=True), 0, axis)  # rows, cols of a slice
    box = tuple(float(v) for v in jittered_box(in_plane, rng, jitter))
    along = gt.any(axis=tuple(a for a in range(3) if a != axis))[:, None]  # (Z, 1): rows = k
    _, k0, _, k1 = jittered_box(along, rng, jitter)
    return box, (int(k0), int(k1))


def key_slice(gt: np.ndarray, axis: int = 2) -> int:
    """The slice with the most foreground (the first of ties)."""
    return int(np.argmax(gt.sum(axis=tuple(a for a in range(3) if a != axis))))


class CachedSlices:
    """`SliceSetter` over an `EmbeddingCache`: slice k of a case, prepared once per model and
    kept for the next few requests (a case's protocols revisit the same slices)."""

    def __init__(self, seg: Segmenter, cache: Any, case: VolumeCase, axis: int,
                 keep: int = 48) -> None:
        self.seg, self.cache, self.case, self.axis, self.keep = seg, cache, case, axis, keep
        self._held: OrderedDict[int, tuple[Any, tuple[int, int]]] = OrderedDict()

    def __call__(self, k: int) -> None:
        from segmote.modeling.encoder_output import EncoderOutput

        if k not in self._held:
            c = self.case
            sample = SliceSample(c.dataset, c.case_id, c.image, c.label, k, self.axis,
                                 c.class_value, c.class_name, c.modality, 0)
            cached = self.cache.get(sample)
            model = self.seg.model
            enc = EncoderOutput(cached.image_embedding[None].to(self.seg.device),
                                cached.early_features[None].to(self.seg.device))
            with torch.inference_mode():
                self._held[k] = (model.prepare_image(enc), cached.geometry.orig_hw)
            if len(self._held) > self.keep:
                self._held.popitem(last=False)
        self._held.move_to_end(k)
        self.seg.set_features(*self._held[k])


def _every_slice(seg: Segmenter, setter: Callable[[int], None], shape: tuple[int, ...],
                 box: tuple[float, ...], ks: tuple[int, int], axis: int,
                 **decode_kwargs: Any) -> np.ndarray:
    out = np.zeros(shape, bool)
    for k in range(ks[0], ks[1] + 1):
        setter(k)
        set_volume_slice(out, k, axis, seg.predict(box=box, **decode_kwargs).mask)
    return out


def segment_case(seg: Segmenter, setter: Callable[[int], None], gt: np.ndarray,
                 protocol: Protocol, axis: int = 2,
                 config: PropagationConfig = DEFAULT_CONFIG,
                 rng: np.random.Generator | None = None,
                 spacing: tuple[float, ...] | None = None, **decode_kwargs: Any) -> np.ndarray:
    """One 3-D protocol on one object -> the (X, Y, Z) bool prediction. spacing: the
    volume's voxel size in mm (a one-slice prompt's `PropagationConfig.max_depth`)."""
    rng = rng if rng is not None else np.random.default_rng(protocol.seed)
    if protocol.prompt in ("box3d", "box3d_every_slice"):
        box, ks = jittered_box3d(gt, rng, protocol.jitter, axis)
        if protocol.prompt == "box3d_every_slice":
            return _every_slice(seg, setter, gt.shape, box, ks, axis, **decode_kwargs)
        key = (ks[0] + ks[1]) // 2
        return propagate(seg, setter, gt.shape, key, {"box": box}, axis=axis, k_range=ks,
                         bound=box, config=config, **decode_kwargs).mask
    k = key_slice(gt, axis)
    plane = volume_slice(gt, k, axis)
    if protocol.prompt == "key_box":
        prompt: dict[str, Any] = {"box": tuple(float(v) for v in
                                               jittered_box(plane, rng, protocol.jitter))}
    else:
        prompt = {"points": [deepest_point(plane)], "labels": [1]}
    return propagate(seg, setter, gt.shape, k, prompt, axis=axis, config=config, spacing=spacing,
                     **decode_kwargs).mask


def evaluate_volumes(model: torch.nn.Module, cases: Iterable[VolumeCase],
                     protocols: list[Protocol], cache: Any, axis: int = 2,
                     nsd_mm: float = 2.0, config: PropagationConfig = DEFAULT_CONFIG,
                     outputs: Iterable[str] | None = None) -> Iterator[PromptResult]:
    """Score `model` on whole objects under 3-D protocols: one `PromptResult` per (object,
    protocol) with Dice, NSD (tolerance `nsd_mm`) and HD95 (mm, an empty prediction's capped at
    the image diagonal) per output ("adapter" and "base" for a SegMoTE, or only `outputs`)."""
    from segmote.evaluation.evaluate import _read_label

    seg = Segmenter(model)
    decodes = {"adapter": {}, "base": {"output": "base"}} if hasattr(model, "adapter") \
        else {"base": {}}
    if outputs is not None:
        decodes = {name: kw for name, kw in decodes.items() if name in set(outputs)}
    for case in cases:
        label = _read_label(case.label)
        gt = label.array == case.class_value
        cap = image_diagonal_mm(gt.shape, label.spacing)
        setter = CachedSlices(seg, cache, case, axis)
        for protocol in protocols:
            scores: dict[str, dict[str, float]] = {"dice": {}, "nsd": {}, "hd95": {}}
            for name, kw in decodes.items():
                pred = segment_case(seg, setter, gt, protocol, axis, config,
                                    case_seed(protocol.seed, case), tuple(label.spacing), **kw)
                (row,) = case_metrics(pred.astype(np.uint8), gt.astype(np.uint8),
                                      {1: case.class_name}, label.spacing, nsd_mm)
                for metric in scores:
                    scores[metric][name] = float(row[metric])
                # an empty prediction has an infinite HD95: capped as evaluation summaries are
                scores["hd95"][name] = min(scores["hd95"][name], cap)
            yield PromptResult(case.dataset, case.case_id, None, case.class_name,
                               int(case.class_value), case.modality, protocol.prompt,
                               scores["dice"], nsd=scores["nsd"], hd95=scores["hd95"])
