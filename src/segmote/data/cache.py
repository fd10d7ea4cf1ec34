"""Embedding cache: the image encoder is frozen, so each training slice is encoded once.

One entry per (image file content, label file content, slice, axis, modality, window, backbone,
input size), in ``root/ab/abcdef.../``:
- ``embedding.npy`` float16 (256, h, w) and ``early.npy`` float16 (C, h', w'): the encoder output;
- ``label.npy`` uint16 (4h, 4w): the slice's whole label map in the padded model-input frame at
  the decoder's mask resolution (nearest neighbour, padding 0), so the trainer compares it with
  low-res logits directly;
- ``meta.json``: shapes, dtypes, sha256 of each array file, the slice's original size and the key
  fields. It is written last, by rename: an entry without it (a killed build) is not an entry.

Slices are preprocessed by `segmote.transforms.preprocess`, the function `Segmenter.set_image`
uses, and cut by `segmote.slicing.volume_slice`, so training sees what inference sees.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from segmote.atomic import atomic_write_bytes
from segmote.checkpoint import sha256_file
from segmote.data.datasets import SliceSample
from segmote.data.files import RecentFiles, read_label
from segmote.errors import InputError
from segmote.slicing import volume_slice
from segmote.io import read_image
from segmote.intensity import normalize_modality, parse_window
from segmote.samples import segmote_home
from segmote.transforms import ResizeGeometry, preprocess

FORMAT_VERSION = 1
_ARRAYS = {"embedding": np.float16, "early": np.float16, "label": np.uint16}


@dataclass
class CacheStats:
    """What a build (or the gets so far) did: entries encoded new, found valid, re-encoded
    because they were corrupt or incomplete; wall time of the build in seconds."""

    built: int = 0
    reused: int = 0
    rebuilt: int = 0
    seconds: float = 0.0


@dataclass
class CachedSlice:
    """One cached slice, ready for the decoder.

    image_embedding: (256, h, w) float32. early_features: (C, h', w') float32.
    label: (4h, 4w) int64, every class of the slice in the padded input frame (0 = background
        and padding); the target of a sample is ``label == sample.class_value``.
    geometry: maps the padded frame back to the slice's original (H, W).
    """

    image_embedding: Tensor
    early_features: Tensor
    label: Tensor
    geometry: ResizeGeometry


class _Pair(NamedTuple):
    """What an entry depends on besides the model (one image slice; all its classes share it)."""

    image: Path
    label: Path
    slice_index: int | None
    axis: int | None  # None for 2-D images
    modality: str | None


def _pair(sample: SliceSample) -> _Pair:
    is_2d = sample.slice_index is None
    return _Pair(Path(sample.image), Path(sample.label), sample.slice_index,
                 None if is_2d else sample.axis, normalize_modality(sample.modality))


def label_to_frame(label: np.ndarray, geometry: ResizeGeometry, side: int) -> np.ndarray:
    """(H, W) label map -> (side, side) uint16 over the padded input frame, nearest neighbour.

    The resized part is (round(h' * side / S), round(w' * side / S)) for the resized size (h', w')
    and input size S, as `ResizeGeometry.mask_to_lowres` places masks; each output pixel takes
    the source pixel under its centre (no half-pixel shift); the rest is 0.
    """
    h = int(round(geometry.resized_hw[0] * side / geometry.target))
    w = int(round(geometry.resized_hw[1] * side / geometry.target))
    H, W = label.shape
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    out = np.zeros((side, side), np.uint16)
    out[:h, :w] = label[rows][:, cols]
    return out


def default_cache_dir() -> Path:
    """The embedding cache that `segmote curate`, `segmote train` and `segmote evaluate-model`
    share unless told otherwise: SEGMOTE_HOME/embedding-cache. Entries are keyed by content
    (image, label, slice, window, encoder weights), so one folder serves every run."""
    return segmote_home() / "embedding-cache"


class EmbeddingCache:
    """Precomputed encoder outputs + label maps of training slices on disk.

    Args:
        root: cache folder (shared by runs: entries are keyed by content, not by run).
        model: a `Sam` or `SegMoTE`; only its frozen `encode` is used, on its device.
        backbone_id: names the encoder weights (e.g. "litemedsam-79d8c9dc..."); part of the key.
        window: CT window for CT slices (`segmote.intensity.parse_window`); other modalities
            ignore it, as a CT window means nothing for MR or microscopy.

    sha256 of the array files is checked when an entry is built or first read in this process,
    then remembered; a corrupt or incomplete entry is re-encoded, never returned.
    """

    def __init__(self, root: Path, model: nn.Module, backbone_id: str,
                 window: str | None = None) -> None:
        self.root = Path(root)
        self.model = model
        self.backbone_id = backbone_id
        self.window = window
        self._window = parse_window(window)  # fails early on a bad window string
        self._file_sha: dict[Path, str] = {}
        self._verified: set[str] = set()  # entry digests whose sha256 matched in this process
        self.stats = CacheStats()  # rebuilds done by `get`

    # -------------------------------------------------------------- keys
    def _sha(self, path: Path) -> str:
        if path not in self._file_sha:
            if not path.is_file():
                raise InputError(f"{path}: file not found (it was there when the dataset was read)")
            self._file_sha[path] = sha256_file(path)
        return self._file_sha[path]

    def key_fields(self, pair: _Pair) -> dict[str, Any]:
        window = self._window if pair.modality == "CT" else None
        return {"format": FORMAT_VERSION, "image_sha256": self._sha(pair.image),
                "label_sha256": self._sha(pair.label), "slice_index": pair.slice_index,
                "axis": pair.axis, "modality": pair.modality,
                "window": list(window) if window else None, "backbone_id": self.backbone_id,
                "img_size": int(self.model.img_size)}

    def entry_dir(self, sample: SliceSample) -> Path:
        """Folder of the entry holding `sample`'s slice."""
        return self._dir(self.key_fields(_pair(sample)))

    def _dir(self, fields: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        return self.root / digest[:2] / digest

    # -------------------------------------------------------------- reading
    def _load(self, d: Path, fields: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """The entry's arrays (memory-mapped) and meta, or None if it is missing, incomplete,
        stale or corrupt."""
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            if meta.get("key") != fields:
                return None
            arrays: dict[str, Any] = {"orig_hw": tuple(meta["orig_hw"])}
            for name, dtype in _ARRAYS.items():
                spec = meta["arrays"][name]
                arr = np.load(d / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                if list(arr.shape) != spec["shape"] or arr.dtype != np.dtype(dtype) or \
                        spec["dtype"] != np.dtype(dtype).name:
                    return None
                arrays[name] = arr
            if d.name not in self._verified:
                if any(sha256_file(d / f"{n}.npy") != meta["arrays"][n]["sha256"]
                       for n in _ARRAYS):
                    return None
                self._verified.add(d.name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
            return None  # missing file, truncated array, bad JSON: rebuild
        return arrays

    @staticmethod
    def _to_cached(arrays: dict[str, Any], img_size: int) -> CachedSlice:
        return CachedSlice(torch.from_numpy(np.array(arrays["embedding"], dtype=np.float32)),
                           torch.from_numpy(np.array(arrays["early"], dtype=np.float32)),
                           torch.from_numpy(np.array(arrays["label"], dtype=np.int64)),
                           ResizeGeometry.for_shape(arrays["orig_hw"], img_size))

    def get(self, sample: SliceSample) -> CachedSlice:
        """The cached slice of `sample` (encoded now if its entry is missing or damaged)."""
        pair = _pair(sample)
        fields = self.key_fields(pair)
        d = self._dir(fields)
        arrays = self._load(d, fields)
        if arrays is None:
            existed = d.exists()
            image, label = _read_plane(pair, read_image(pair.image).array, read_label(pair.label))
            arrays = self._write_entry(d, fields, image, label)
            if existed:
                self.stats.rebuilt += 1
            else:
                self.stats.built += 1
        return self._to_cached(arrays, int(self.model.img_size))

    # -------------------------------------------------------------- building
    @contextmanager
    def _eval_encoder(self) -> Iterator[None]:
        # BatchNorm in TinyViT must use its running statistics, whatever mode the model is in
        encoder = self.model.image_encoder
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            encoder.train(was_training)

    def _encode(self, image: np.ndarray, modality: str | None,
                ) -> tuple[np.ndarray, np.ndarray, ResizeGeometry]:
        window = self.window if modality == "CT" else None
        x, geometry = preprocess(image, int(self.model.img_size), modality, window)
        with self._eval_encoder():
            out = self.model.encode(x[None].to(self.model.device))
        emb = out.image_embedding[0].float().cpu().numpy().astype(np.float16)
        early = out.early_features[0].float().cpu().numpy().astype(np.float16)
        if not (np.isfinite(emb).all() and np.isfinite(early).all()):
            raise RuntimeError("encoder output overflows float16; cannot cache it")
        return emb, early, geometry

    def _write_entry(self, d: Path, fields: dict[str, Any], image: np.ndarray,
                     label: np.ndarray,
                     encoded: tuple[np.ndarray, np.ndarray, ResizeGeometry] | None = None,
                     ) -> dict[str, Any]:
        """Encode one slice (unless `encoded` is given) and write its entry; returns the
        arrays as `_load` would."""
        emb, early, geometry = encoded or self._encode(image, fields["modality"])
        side = 4 * emb.shape[-1]  # the decoder's low-res mask grid
        arrays = {"embedding": emb, "early": early,
                  "label": label_to_frame(label, geometry, side)}
        d.mkdir(parents=True, exist_ok=True)
        (d / "meta.json").unlink(missing_ok=True)  # invalid until fully rewritten
        meta: dict[str, Any] = {"key": fields, "orig_hw": list(geometry.orig_hw), "arrays": {}}
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            data = buf.getvalue()
            # unique temporary names: several ranks may rebuild the same entry at once
            atomic_write_bytes(d / f"{name}.npy", data)
            meta["arrays"][name] = {"shape": list(arr.shape), "dtype": arr.dtype.name,
                                    "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_bytes(d / "meta.json", json.dumps(meta, indent=1).encode())
        self._verified.add(d.name)
        return {**arrays, "orig_hw": geometry.orig_hw}

    def build(self, samples: list[SliceSample], rank: int = 0, world_size: int = 1,
              progress: bool = True) -> CacheStats:
        """Encode every (image, slice) of `samples` not cached yet.

        Entries that differ only in their label file (e.g. two label sets drawn on one image)
        share one encoder pass. Image slices are sharded as ``slices[rank::world_size]`` so DDP
        ranks split the work (call a barrier before reading other ranks' entries). Encodes one
        slice at a time.
        """
        from tqdm.auto import tqdm

        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        start = time.perf_counter()
        stats = CacheStats()
        groups: dict[str, list[_Pair]] = {}  # image-side key -> pairs (label files) on it
        for pair in dict.fromkeys(_pair(s) for s in samples):
            fields = self.key_fields(pair)
            image_key = json.dumps({k: v for k, v in fields.items() if k != "label_sha256"},
                                   sort_keys=True)
            groups.setdefault(image_key, []).append(pair)
        files = RecentFiles()
        for pairs in tqdm(list(groups.values())[rank::world_size], desc="embedding cache",
                          unit="slice", disable=not progress):
            encoded = None
            for pair in pairs:
                fields = self.key_fields(pair)
                d = self._dir(fields)
                if self._load(d, fields) is not None:
                    stats.reused += 1
                    continue
                existed = d.exists()
                image, label = _read_plane(pair, files.image(pair.image),
                                           files.label(pair.label))
                if encoded is None:
                    encoded = self._encode(image, fields["modality"])
                self._write_entry(d, fields, image, label, encoded)
                if existed:
                    stats.rebuilt += 1
                else:
                    stats.built += 1
        stats.seconds = time.perf_counter() - start
        return stats


def _read_plane(pair: _Pair, image: np.ndarray, label: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D image (H, W[, C]) and label (H, W) of one pair, cut as inference cuts them."""
    if pair.slice_index is not None:
        if image.ndim != 3 or label.ndim != 3:
            raise InputError(f"{pair.image}: expected a 3-D volume for slice {pair.slice_index}")
        image = volume_slice(image, pair.slice_index, pair.axis)
        label = volume_slice(label, pair.slice_index, pair.axis)
    if image.shape[:2] != label.shape:
        raise InputError(f"{pair.label}: label slice shape {label.shape} differs from the image "
                         f"slice shape {image.shape[:2]} of {pair.image.name}")
    return image, label
