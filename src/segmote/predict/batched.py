"""Volumes through the model in batches of slices, with reading and writing beside the model work.

`segment_volume` and `auto_volume` of `segmote.predict.volume` with three changes (issue 22):

- slices go through the encoder `batch_size` at a time (default
  `segmote.batching.default_batch_size`: 32 on a GPU, 1 on a CPU);
- prompted: all prompts of a batch of slices are decoded in one call per prompt structure
  (box, points of one count, or both: `decode` takes one tensor per kind), each prompt against
  its own slice's features; prompt-free: each slice's classes are decoded as `AutoSegmenter`
  decodes them, on that slice's row of the batch's features;
- a background thread reads and preprocesses the next batch while the model works, and a
  writer thread combines each slice's masks into the label volume.

In fp32 the label maps of the bundled CT in batches of 2 are the ones slice by slice gives
(test_volume_batched.py); larger batches may round the encoder differently and flip pixels at
the threshold (bench_gpu.py found a 512 x 512 x 8 CT not identical at batch 4). Memory per
batch: its slices' inputs and features plus one logit map at the original size per prompt
(`auto`: per class of one slice at a time, as slice by slice), so the peak stays near the
volume and the output plus a few slices' worth.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segmote.batching import check_batch_size, chunks, prefetched
from segmote.io import ImageData
from segmote.io.finite import finite_mask
from segmote.predict.prompts import ObjectPrompt, label_dtype
from segmote.predict.segmenter import Prediction, Segmenter
from segmote.predict.volume import Progress, Recorder, combine, decode_arguments, slice_prompts
from segmote.slicing import set_volume_slice, volume_slice
from segmote.transforms import preprocess

# decode outputs whose first dimension is the decoder block, the prompt second
_BLOCK_FIRST = ("router_logits", "expert_index")


def _encode(seg: Segmenter, inputs: list[Tensor]) -> Any:
    """(B, 3, S, S) preprocessed slices -> the model's per-image features, batch B."""
    with torch.inference_mode():
        x = torch.stack(inputs).to(seg.device)
        return seg.model.prepare_image(seg.model.encode(x))


def _rows(features: Any, index: list[int]) -> Any:
    """The features of images `index` (prompt p decodes against image index[p])."""
    rows = torch.as_tensor(index, device=features[0].device)
    return type(features)(*(t.index_select(0, rows) for t in features))


def _one(pred: Prediction, j: int) -> Prediction:
    """Prompt j of a batched `Prediction`, shaped as a one-prompt `predict` returns it."""
    n = len(pred.logits)
    extras = {}
    for key, v in pred.extras.items():
        if key in _BLOCK_FIRST:
            v = v[:, j:j + 1]
        elif isinstance(v, (Tensor, np.ndarray)) and v.ndim and v.shape[0] == n:
            v = v[j:j + 1]
        extras[key] = v
    return Prediction(pred.mask[j], float(pred.score[j]), pred.logits[j],
                      pred.lowres_logits[j:j + 1], extras)


def _structure(kw: dict) -> tuple[bool, int]:
    return "box" in kw, len(kw.get("points", ()))


def _decode_batch(seg: Segmenter, features: Any, hw: tuple[int, int],
                  rows: list[tuple[int, int, int, dict]], shared: dict,
                  record: Recorder | None) -> dict[tuple[int, int], np.ndarray]:
    """Decode every (image row, slice, object, prompt) of a batch: one `predict` call per
    prompt structure. Returns (slice, object) -> logits on the slice's grid."""
    groups: dict[tuple[bool, int], list[tuple[int, int, int, dict]]] = {}
    for row in rows:
        groups.setdefault(_structure(row[3]), []).append(row)
    maps, recorded = {}, []
    for (has_box, n_points), group in sorted(groups.items()):
        seg.set_features(_rows(features, [i for i, _, _, _ in group]), hw)
        kw = dict(shared)
        if has_box:
            kw["boxes"] = np.array([r[3]["box"] for r in group], np.float32)
        if n_points:
            kw["points"] = np.array([r[3]["points"] for r in group], np.float32)
            kw["labels"] = np.array([r[3]["labels"] for r in group], np.int64)
        pred = seg.predict(**kw)
        for j, (_, k, n, _) in enumerate(group):
            maps[(k, n)] = pred.logits[j]
            if record is not None:
                recorded.append((k, n, _one(pred, j)))
    for k, n, pred in sorted(recorded, key=lambda r: r[:2]):  # slice by slice's order
        record(n, k, pred)
    return maps


class _Writer:
    """Slices of the label volume written by one background thread, in order of submission."""

    def __init__(self, out: np.ndarray, axis: int) -> None:
        self.out, self.axis = out, axis
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="segmote-writer")
        self.pending: list[Future] = []

    def put(self, k: int, make: Any, *args: Any) -> None:
        self.pending.append(self.pool.submit(
            lambda: set_volume_slice(self.out, k, self.axis, make(*args))))

    def finish(self) -> np.ndarray:
        try:
            for f in self.pending:
                f.result()  # an error in the writer is raised here
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return self.out


def _batches(seg: Segmenter, data: ImageData, ks: list[int], axis: int, modality: str | None,
             window: str | None, batch_size: int | None, progress: Progress | None):
    """(slice indices, features of the batch) per batch; the slices are read and
    preprocessed in the background; the progress bar advances as batches finish."""
    vol = data.array
    size = check_batch_size(batch_size, seg.device)
    ticks = iter(progress(ks)) if progress else None

    def prepare(batch: list[int]) -> tuple[list[int], list[Tensor]]:
        return batch, [preprocess(volume_slice(vol, k, axis), seg.model.img_size, modality,
                                  window, finite_mask(data, k, axis))[0] for k in batch]

    for batch, inputs in prefetched(chunks(ks, size), prepare):
        yield batch, _encode(seg, inputs)
        for _ in batch if ticks is not None else ():
            next(ticks, None)


def segment_volume_batched(seg: Segmenter, data: ImageData, objects: list[ObjectPrompt],
                           axis: int = 2, modality: str | None = None,
                           window: str | None = None, progress: Progress | None = None,
                           record: Recorder | None = None, text: str | None = None,
                           attention: bool = False, batch_size: int | None = None) -> np.ndarray:
    """`segment_volume` in batches of slices (module doc); the same arguments plus
    batch_size (None: the device's default)."""
    vol = data.array
    plan = slice_prompts(objects, axis, vol.shape)
    ks = sorted(plan)
    hw = volume_slice(vol, ks[0], axis).shape[:2]
    writer = _Writer(np.zeros(vol.shape, dtype=label_dtype(objects)), axis)
    try:
        for batch, features in _batches(seg, data, ks, axis, modality, window, batch_size,
                                        progress):
            rows = [(i, k, n, kw) for i, k in enumerate(batch) for n, kw in plan[k]]
            maps = _decode_batch(seg, features, hw, rows, decode_arguments(text, attention),
                                 record)
            for k in batch:
                writer.put(k, combine, [maps[(k, n)] for n, _ in plan[k]],
                           [objects[n].label for n, _ in plan[k]], writer.out.dtype)
    finally:
        seg.reset_image()
        out = writer.finish()
    return out


def auto_volume_batched(seg: Segmenter, data: ImageData, classes: list[str] | None,
                        axis: int = 2, modality: str | None = None, window: str | None = None,
                        threshold: float | None = None, progress: Progress | None = None,
                        batch_size: int | None = None) -> tuple[np.ndarray, list[str], dict]:
    """`auto_volume` in batches of slices through the encoder (module doc)."""
    vol = data.array
    ks = list(range(vol.shape[axis]))
    hw = volume_slice(vol, 0, axis).shape[:2]
    writer: _Writer | None = None
    names: list[str] = []
    slices: dict[str, int] = {}
    try:
        for batch, features in _batches(seg, data, ks, axis, modality, window, batch_size,
                                        progress):
            for i, k in enumerate(batch):
                seg.set_features(_rows(features, [i]), hw)
                pred = seg.predict_auto(classes, threshold)
                if writer is None:
                    names, slices = pred.classes, dict.fromkeys(pred.classes, 0)
                    writer = _Writer(np.zeros(vol.shape, pred.label_map.dtype), axis)
                writer.put(k, lambda m: m, pred.label_map)
                for n, kept in pred.kept.items():
                    slices[n] += int(kept)
    finally:
        seg.reset_image()
        out = writer.finish() if writer is not None else None
    return out, names, slices
