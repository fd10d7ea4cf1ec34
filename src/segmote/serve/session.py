"""One opened image (a session): its label map, objects, undo / redo, and the session store.

Coordinates follow the CLI: a volume (X, Y, Z) is cut along `axis` into slices whose image is
`volume_slice(volume, k, axis)` (rows follow the higher in-plane axis, columns the lower one; for
axis 2 a slice is vol[:, :, k].T, x = i, y = j); a 2-D image has one slice, k = 0.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from segmote.io import ImageData
from segmote.io.finite import finite_mask
from segmote.slicing import volume_slice
from segmote.serve.cache import FeatureCache
from segmote.serve.config import ServeConfig
from segmote.serve.errors import ApiError, not_found

MB = 1 << 20
# refinement inputs kept per session (the oldest go first): 256 x 256 float32 = 256 KB each
MAX_LOWRES = 128
Index = tuple[Any, ...]


@dataclass(frozen=True)
class SegObject:
    """One segmented structure: its label value, name (a class name, or "object N") and the
    predicted IoU of its latest mask."""

    label: int
    name: str
    score: float | None = None

    def as_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "score": self.score}


@dataclass
class Edit:
    """One undoable change: the label-map block at `index` before and after, the object table
    before and after, and the refinement logits it replaced (key -> before, after)."""

    index: Index
    before: np.ndarray
    after: np.ndarray
    objects_before: dict[int, SegObject]
    objects_after: dict[int, SegObject]
    lowres: dict[tuple, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.before.nbytes + self.after.nbytes


def slice_index(axis: int, k: int) -> Index:
    index: list[Any] = [slice(None)] * 3
    index[axis] = k
    return tuple(index)


def mask_bbox(mask: np.ndarray) -> Index:
    """The smallest block (a tuple of slices) holding every True voxel of `mask` (N-D)."""
    if not mask.any():
        return tuple(slice(0, 0) for _ in mask.shape)
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


class ImageSession:
    """An image or volume being segmented by one user.

    labels: (X, Y, Z) uint16 for a volume, (H, W) for a 2-D image; the server's label map.
    objects: label -> SegObject. cache: encoded slices, key (axis, k). lowres: the latest
    low-res mask logits per (label, axis, k), fed back as the mask prompt when refining.
    """

    def __init__(self, sid: str, data: ImageData, modality: str | None, window: str | None,
                 config: ServeConfig, name: str) -> None:
        self.id, self.data, self.name = sid, data, name
        self.modality, self.window = modality, window
        shape = data.array.shape if data.is_volume else data.array.shape[:2]
        self.labels = np.zeros(shape, np.uint16)
        self.objects: dict[int, SegObject] = {}
        self.cache = FeatureCache(int(config.cache_mb * MB))
        self.lowres: dict[tuple, Any] = {}
        self.undo_budget = int(config.undo_mb * MB)
        self.undo_stack: list[Edit] = []
        self.redo_stack: list[Edit] = []
        self.lock = threading.RLock()
        self.last_used = time.monotonic()
        self.progress: dict | None = None  # {"task", "done", "total"} of a long request

    # -- geometry --------------------------------------------------------------------------
    @property
    def is_volume(self) -> bool:
        return self.data.is_volume

    def depth(self, axis: int) -> int:
        return self.data.array.shape[axis] if self.is_volume else 1

    def check_slice(self, axis: int, k: int) -> None:
        if axis not in (0, 1, 2) or (not self.is_volume and axis != 2):
            raise ApiError(400, f"axis {axis}: expected 0, 1 or 2 (2-D images: 2)")
        if not 0 <= k < self.depth(axis):
            raise ApiError(400, f"slice {k} is outside the image (0..{self.depth(axis) - 1} "
                                f"along axis {axis})")

    def slice_image(self, axis: int, k: int) -> np.ndarray:
        """(H, W) or (H, W, C) pixels of slice k (a view)."""
        self.check_slice(axis, k)
        return volume_slice(self.data.array, k, axis) if self.is_volume else self.data.array

    def slice_valid(self, axis: int, k: int) -> np.ndarray | None:
        """Where slice k held finite values before they were replaced (None: everywhere), for
        `Segmenter.set_image(valid=...)`."""
        return finite_mask(self.data, k if self.is_volume else None, axis)

    def slice_labels(self, axis: int, k: int) -> np.ndarray:
        self.check_slice(axis, k)
        return volume_slice(self.labels, k, axis) if self.is_volume else self.labels

    def next_label(self) -> int:
        """The smallest label value no object uses."""
        used = set(self.objects)
        return next(n for n in range(1, len(used) + 2) if n not in used)

    # -- edits -----------------------------------------------------------------------------
    def paint_slice(self, obj: SegObject, axis: int, k: int, mask: np.ndarray,
                    lowres: Any = None) -> None:
        """Make `mask` (the slice's (H, W) grid) the object's pixels on slice k: its earlier
        pixels there are cleared, other objects under the mask are overwritten."""
        index = slice_index(axis, k) if self.is_volume else (slice(None), slice(None))
        old = self.labels[index]
        block = mask.T if self.is_volume else mask
        new = np.where(old == obj.label, 0, old).astype(np.uint16)
        new[block] = obj.label
        self._commit(index, new, {**self.objects, obj.label: obj},
                     {(obj.label, axis, k): lowres})

    def paint_volume(self, obj: SegObject, mask: np.ndarray) -> None:
        """Make `mask` (the label map's shape, bool) the object's voxels; the undo record keeps
        only the block bounding the old and new voxels."""
        index = mask_bbox(mask | (self.labels == obj.label))
        old = self.labels[index]
        new = np.where(old == obj.label, 0, old).astype(np.uint16)
        new[mask[index]] = obj.label
        self._commit(index, new, {**self.objects, obj.label: obj}, {})

    def paint_classes(self, found: np.ndarray, objects: list[SegObject]) -> None:
        """One edit for automatic mode: voxels of `found` (the label map's shape) with value i
        become objects[i - 1]'s label (earlier labels under them are overwritten)."""
        index = mask_bbox(found > 0)
        values = np.array([0] + [o.label for o in objects], np.uint16)
        block = found[index]
        new = np.where(block > 0, values[block], self.labels[index]).astype(np.uint16)
        self._commit(index, new, {**self.objects, **{o.label: o for o in objects}}, {})

    def _commit(self, index: Index, new: np.ndarray, objects_after: dict[int, SegObject],
                lowres: dict[tuple, Any]) -> None:
        edit = Edit(index, self.labels[index].copy(), new, dict(self.objects), objects_after,
                    {key: (self.lowres.get(key), value) for key, value in lowres.items()})
        self._apply(edit, forward=True)
        self.undo_stack.append(edit)
        self.redo_stack.clear()
        while sum(e.nbytes for e in self.undo_stack) > self.undo_budget and \
                len(self.undo_stack) > 1:
            self.undo_stack.pop(0)  # the oldest history goes first

    def _apply(self, edit: Edit, forward: bool) -> None:
        self.labels[edit.index] = edit.after if forward else edit.before
        self.objects = dict(edit.objects_after if forward else edit.objects_before)
        for key, (before, after) in edit.lowres.items():
            value = after if forward else before
            self.lowres.pop(key, None)  # re-inserted last: the dict's order is the age
            if value is not None:
                self.lowres[key] = value
        while len(self.lowres) > MAX_LOWRES:
            self.lowres.pop(next(iter(self.lowres)))

    def undo(self) -> bool:
        """Revert the latest edit; False when there is none."""
        return self._step(self.undo_stack, self.redo_stack, forward=False)

    def redo(self) -> bool:
        """Apply the latest undone edit again; False when there is none."""
        return self._step(self.redo_stack, self.undo_stack, forward=True)

    def _step(self, source: list[Edit], target: list[Edit], forward: bool) -> bool:
        if not source:
            return False
        edit = source.pop()
        self._apply(edit, forward)
        target.append(edit)
        return True

    def remove_object(self, label: int) -> None:
        if label not in self.objects:
            raise not_found(f"object {label}")
        gone = self.labels == label
        index = mask_bbox(gone)
        remaining = {n: o for n, o in self.objects.items() if n != label}
        self._commit(index, np.where(gone[index], 0, self.labels[index]).astype(np.uint16),
                     remaining, {})

    def rename(self, label: int, name: str) -> SegObject:
        if label not in self.objects:
            raise not_found(f"object {label}")
        self.objects[label] = replace(self.objects[label], name=name)
        return self.objects[label]

    def summary(self) -> dict:
        return {"id": self.id, "objects": [o.as_dict() for o in self.objects.values()],
                "can_undo": bool(self.undo_stack), "can_redo": bool(self.redo_stack)}


class SessionStore:
    """The open sessions, by random id (`secrets.token_urlsafe`: 128 bits, unguessable).

    Sessions idle for longer than `ttl_s` expire; past `max_sessions` the least recently used
    one is closed. Each session is reachable only through its own id."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._sessions: OrderedDict[str, ImageSession] = OrderedDict()
        self._lock = threading.Lock()

    def new_id(self) -> str:
        return secrets.token_urlsafe(16)

    def add(self, session: ImageSession) -> None:
        with self._lock:
            self._sweep()
            self._sessions[session.id] = session
            while len(self._sessions) > self.config.max_sessions:
                _, old = self._sessions.popitem(last=False)
                old.cache.clear()

    def get(self, sid: str) -> ImageSession:
        with self._lock:
            self._sweep()
            session = self._sessions.get(sid)
            if session is None:
                raise not_found(f"image {sid!r} (unknown id, closed or expired)")
            session.last_used = time.monotonic()
            self._sessions.move_to_end(sid)
            return session

    def peek(self, sid: str) -> ImageSession | None:
        """The session without touching its idle time (the background encoder's view)."""
        with self._lock:
            return self._sessions.get(sid)

    def remove(self, sid: str) -> None:
        with self._lock:
            session = self._sessions.pop(sid, None)
        if session is None:
            raise not_found(f"image {sid!r}")
        session.cache.clear()

    def __len__(self) -> int:
        return len(self._sessions)

    def _sweep(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items()
                    if now - v.last_used > self.config.session_ttl_s]:
            self._sessions.pop(sid).cache.clear()
