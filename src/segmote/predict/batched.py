"""Volumes through the model in batches of slices, with reading and writing beside the model work.

`segment_volume` and `auto_volume` of `segmote.predict.volume` with these changes (issue 22):

- slices go through the encoder `batch_size` at a time (default
  `segmote.batching.default_batch_size`: 32 on a GPU, 1 on a CPU);
- prompted, under bf16 / fp16 autocast: all prompts of a batch of slices are decoded in one
  call per prompt structure (box, points of one count, or both: `decode` takes one tensor per
  kind), each prompt against its own slice's features. In fp32 each prompt is decoded alone,
  as slice by slice decodes it: the decoder's per-prompt matmuls (the prompt encoder's
  positional encoding, (N, 2) @ (2, 128); SAM's hypernetwork and IoU MLPs and the expert
  hypernets, N rows of 256) take another BLAS kernel for N > 1 rows than for one (MKL's
  gemv / small-M paths), which moved logits by ~1e-5 and flipped pixels at the threshold
  (a 512 x 512 x 8 CT at batch 4). The encoder, whose batching is what a GPU gains from,
  gives each slice the same features in any batch on the CPU (batches of 1 to 8 checked);
- prompt-free: each slice's classes are decoded as `AutoSegmenter` decodes them, on that
  slice's row of the batch's features;
- a background thread reads and preprocesses the next batch while the model works, and a
  writer thread combines each slice's masks into the label volume;
- `EncodedSlices`: the slices a propagation will visit, encoded ahead in batches.

So in fp32 the label maps equal slice by slice for any batch size (test_volume_batched.py:
batches of 1, 2, 3, 4 and 8). Memory per batch: its slices' inputs and features plus one
logit map at the original size per prompt (`auto`: per class of one slice at a time, as
slice by slice), so the peak stays near the volume and the output plus a few slices' worth.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segmote.batching import check_batch_size, chunks, prefetched
from segmote.io import ImageData
from segmote.io.finite import finite_image, finite_mask
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


def _together(seg: Segmenter) -> bool:
    """Decode all prompts of a batch in one call (under bf16 / fp16 autocast), or each prompt
    alone against its slice's features (fp32: the module doc says why)."""
    return torch.is_autocast_enabled(seg.device.type)


def _decode_alone(seg: Segmenter, features: Any, hw: tuple[int, int],
                  rows: list[tuple[int, int, int, dict]], shared: dict,
                  record: Recorder | None) -> dict[tuple[int, int], np.ndarray]:
    """Each (image row, slice, object, prompt) decoded alone, exactly as `segment_volume` decodes
    it (the same call, the same shapes): (slice, object) -> logits on the slice's grid."""
    maps, row_of = {}, None
    for i, k, n, kw in rows:  # rows come in slice by slice's order
        if i != row_of:
            seg.set_features(_rows(features, [i]), hw)
            row_of = i
        pred = seg.predict(**kw, **shared)
        if record is not None:
            record(n, k, pred)
        maps[(k, n)] = pred.logits
    return maps


def _decode_batch(seg: Segmenter, features: Any, hw: tuple[int, int],
                  rows: list[tuple[int, int, int, dict]], shared: dict,
                  record: Recorder | None) -> dict[tuple[int, int], np.ndarray]:
    """Decode every (image row, slice, object, prompt) of a batch: in fp32 each alone, else one
    `predict` call per prompt structure. Returns (slice, object) -> logits on the slice's grid."""
    if not _together(seg):
        return _decode_alone(seg, features, hw, rows, shared, record)
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
    preprocessed in the background; the progress bar advances as batches finish.
    NaN / Inf in `data` are replaced as `segment_volume` replaces them."""
    data = finite_image(data)
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


class EncodedSlices:
    """Slices of a volume encoded ahead of a propagation: a `SliceSetter` for
    `segmote.predict.propagation.propagate`.

    `follow(order)` names the slices the propagation will visit
    (`propagation.propagation_order`); calling the object with slice k puts k's features into
    the Segmenter, as `seg.set_image` would, while the next `batch_size` slices of the order
    are encoded in one call, in a background thread when `background` (default: on a GPU,
    where the encoder of the next batch then runs while the decoder works on this slice; on a
    CPU the two would only fight for the cores).
    A slice asked out of order (the object ended in one direction, the propagation turns to
    the other) restarts the encoding there; one off the order is encoded alone. Each prompt
    is still decoded alone, so in fp32 the propagated masks are those of `volume_setter`
    (the encoder gives a slice the same features in any batch: test_volume_batched.py).
    Memory: at most three batches of features (the one in use, one ready, one in the works).
    valid: the volume's `segmote.io.finite.finite_mask` (None: every voxel was finite).
    """

    def __init__(self, seg: Segmenter, volume: np.ndarray, axis: int = 2,
                 modality: str | None = None, window: str | None = None,
                 batch_size: int | None = None, background: bool | None = None,
                 valid: np.ndarray | None = None) -> None:
        self.seg, self.volume, self.axis, self.valid = seg, volume, axis, valid
        self.modality, self.window = modality, window
        self.size = check_batch_size(batch_size, seg.device)
        self.background = seg.device.type == "cuda" if background is None else background
        self.hw = volume_slice(volume, 0, axis).shape[:2]
        self._plan: list[int] = []
        self._next = 0  # position in the plan of the first slice of the next batch
        self._ahead: Any = None  # iterator of (slices, features) batches along the plan
        self._ready: dict[int, Any] = {}  # slice -> features, of the batch in use
        self._amp = (False, torch.float32)

    def follow(self, order: list[int]) -> EncodedSlices:
        """Encode ahead along `order` (slice indices) from now on; returns self."""
        dev = self.seg.device.type  # autocast is per thread: the encoder thread re-enters it
        self._amp = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        self._plan, self._ready = list(order), {}
        self._restart(0)
        return self

    def __call__(self, k: int) -> None:
        self.seg.set_features(self._features(k), self.hw)

    def close(self) -> None:
        """Stop the encoder thread (if any) and drop the features."""
        if self._ahead is not None:
            self._ahead.close()
        self._ahead, self._ready = None, {}

    def __enter__(self) -> EncodedSlices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode(self, ks: list[int]) -> tuple[list[int], Any]:
        """(B,) slice indices -> (them, their features, batch B)."""
        inputs = [preprocess(volume_slice(self.volume, k, self.axis), self.seg.model.img_size,
                             self.modality, self.window,
                             None if self.valid is None else volume_slice(self.valid, k,
                                                                          self.axis))[0]
                  for k in ks]
        enabled, dtype = self._amp
        with torch.autocast(self.seg.device.type, dtype=dtype, enabled=enabled):
            return ks, _encode(self.seg, inputs)

    def _restart(self, start: int) -> None:
        self.close()
        self._next = start
        batches = chunks(self._plan[start:], self.size)
        self._ahead = (prefetched(batches, self._encode, ahead=1) if self.background
                       else (self._encode(batch) for batch in batches))

    def _features(self, k: int) -> Any:
        while k not in self._ready:
            rest = self._plan[self._next:]
            if k not in rest:  # off the plan: this slice alone
                return self._encode([k])[1]
            if rest[0] != k:  # further along the plan: skip what lies before it
                self._restart(self._next + rest.index(k))
            ks, features = next(self._ahead)
            self._next += len(ks)
            self._ready = {kk: _rows(features, [j]) for j, kk in enumerate(ks)}
        return self._ready.pop(k)
