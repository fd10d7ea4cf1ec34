"""Prompts of one request, typed: `ObjectPrompt` (one structure to segment) and the checks that
make a request safe to run before any model work.

Coordinates are pixels (x = column, y = row) of a 2-D image, or voxel indices (i, j, k) of a
volume, inclusive. Errors name the parameters of `segmote.predict.pipeline.predict_file`
(`segmote.errors.ParameterError`); the CLI maps them to its flags.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmote.errors import InputError, ParameterError
from segmote.slicing import in_plane_axes

MAX_LABEL = 65535  # label maps are uint8 or uint16
NO_PROMPT = ("give at least one {box} or {point}, or a class name with {text} (or {auto}) for "
             "prompt-free segmentation")


@dataclass
class ObjectPrompt:
    """One structure to segment.

    box: (x0, y0, x1, y1) for a 2-D image; (x0, y0, z0, x1, y1, z1) voxel indices (i, j, k),
        inclusive, for a volume — every slice in its range along the slicing axis is segmented.
    points: (x, y) or (x, y, z) coordinates with `point_labels` 1 (foreground) / 0 (background).
    label: the value the object gets in the output label map.
    """

    label: int = 1
    box: tuple[float, ...] | None = None
    points: list[tuple[float, ...]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PromptNumbers:
    """Boxes and points as numbers whose meaning depends on the image, for callers (the CLI)
    that know the prompts before the image: a 2-D image reads a box as x0,y0,x1,y1 and a point
    as x,y[,label]; a volume as x0,y0,z0,x1,y1,z1 and x,y,z[,label] (a single-slice volume also
    takes the 2-D forms). `to_objects` turns them into `ObjectPrompt`s once the image is read.

    labels: the output value per object, in order (default 1, 2, ...): one per box, plus one
        for the points when there are several boxes (one box: the points refine it).
    """

    boxes: tuple[tuple[float, ...], ...] = ()
    points: tuple[tuple[float, ...], ...] = ()
    labels: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.boxes or self.points)

    def to_objects(self, is_volume: bool, depth: int) -> list[ObjectPrompt]:
        """The `ObjectPrompt`s for an image (`is_volume`; `depth`: its slices along the slicing
        axis)."""
        objects = [ObjectPrompt(box=_box(v, is_volume, depth)) for v in self.boxes]
        pts, pl = [], []
        for v in self.points:
            coords, lab = _point(v, is_volume, depth)
            pts.append(coords)
            pl.append(lab)
        if pts and len(objects) == 1:  # points refine the single box
            objects[0].points, objects[0].point_labels = pts, pl
        elif pts:
            objects.append(ObjectPrompt(points=pts, point_labels=pl))
        if not objects:
            raise ParameterError("boxes", NO_PROMPT)
        if self.labels and len(self.labels) != len(objects):
            raise ParameterError("labels", f"{len(self.labels)} {{label}} values for "
                                 f"{len(objects)} objects (one per box, plus one for the points "
                                 "when there are several boxes)")
        for n, obj in enumerate(objects):
            obj.label = self.labels[n] if self.labels else n + 1
        check_labels(objects)
        return objects


def _numbers_text(v: Sequence[float]) -> str:
    return ",".join(f"{x:g}" for x in v)


def _box(v: Sequence[float], is_volume: bool, depth: int) -> tuple[float, ...]:
    v = [float(x) for x in v]
    if is_volume and len(v) == 4 and depth == 1:
        v = v[:2] + [0.0] + v[2:] + [0.0]  # a single-slice volume accepts a 2-D box
    nd = 3 if is_volume else 2
    if len(v) != 2 * nd:
        raise ParameterError("box", f"{{box}} {_numbers_text(v)!r}: expected {2 * nd} numbers "
                             f"({'x0,y0,z0,x1,y1,z1' if is_volume else 'x0,y0,x1,y1'}), "
                             f"got {len(v)}")
    return tuple(v)


def _point(v: Sequence[float], is_volume: bool, depth: int) -> tuple[tuple[float, ...], int]:
    v = [float(x) for x in v]
    if is_volume and len(v) in (2, 3) and depth == 1:
        v = v[:2] + [0.0] + v[2:]
    nd = 3 if is_volume else 2
    if len(v) not in (nd, nd + 1):
        raise ParameterError("point", f"{{point}} {_numbers_text(v)!r}: expected "
                             f"{'x,y,z' if is_volume else 'x,y'}[,label], got {len(v)} numbers")
    raw = v[nd] if len(v) == nd + 1 else 1.0
    if raw not in (0.0, 1.0):  # int(0.7) would silently give a background click
        raise ParameterError("point", f"{{point}} {_numbers_text(v)!r}: label must be exactly 1 "
                             "(foreground) or 0 (background)")
    return tuple(v[:nd]), int(raw)


def parse_numbers(text: str, param: str) -> tuple[float, ...]:
    """'83,93,0,173' -> (83.0, 93.0, 0.0, 173.0); errors name `param`."""
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ParameterError(param, f"{{{param}}} {text!r}: expected comma-separated "
                             "numbers") from None


def parse_class_names(text: str | None, param: str = "classes") -> list[str] | None:
    """'liver, spleen' -> ['liver', 'spleen'] (None stays None)."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ParameterError(param, f"{{{param}}}: give class names separated by commas")
    return names


def parse_label_names(texts: Sequence[str], param: str = "label_names") -> dict[int, str]:
    """['1=tumour', '2=left kidney'] -> {1: 'tumour', 2: 'left kidney'}."""
    names = {}
    for text in texts:
        value, sep, name = text.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise ParameterError(param, f"{{{param}}} {text!r}: expected VALUE=NAME, e.g. "
                                 "1=tumour")
        names[int(value)] = name.strip()
    return names


def check_label_value(value: int, param: str = "label") -> None:
    """A label-map value must fit uint16 and differ from the background 0."""
    if not 0 < value <= MAX_LABEL:
        raise ParameterError(param, f"{{{param}}} {value}: must be between 1 and {MAX_LABEL}")


def check_labels(objects: Sequence[ObjectPrompt]) -> None:
    for obj in objects:
        check_label_value(obj.label)


def check_text(text: str | None) -> None:
    if text is not None and not text.strip():
        raise ParameterError("text", "{text}: empty class name")


def check_objects(objects: Sequence[ObjectPrompt], shape: tuple[int, ...],
                  is_volume: bool, axis: int = 2) -> None:
    """Fail early (before any model work) on prompts outside the image or volume, reversed
    boxes and bad label values. axis: the slice axis of a volume (which box sides lie in
    the image plane)."""
    if not objects:
        raise ParameterError("boxes", NO_PROMPT)
    check_labels(objects)
    for obj in objects:
        if is_volume:
            check_volume_prompt(obj, shape, axis)
            continue
        h, w = shape[:2]
        named = ([("box corner", obj.box[:2]), ("box corner", obj.box[2:])]
                 if obj.box is not None else []) + [("point", p[:2]) for p in obj.points]
        for what, (x, y) in named:
            if not (0 <= x <= w and 0 <= y <= h):
                where = f" of box {_numbers_text(obj.box)}" if what == "box corner" else ""
                raise InputError(f"{what} ({x:g}, {y:g}){where} lies outside the image (width "
                                 f"{w}, height {h}; x is the column, y the row)")
        _check_box_order(obj.box, 2, (0, 1))


def check_volume_prompt(obj: ObjectPrompt, shape: tuple[int, ...], axis: int = 2) -> None:
    """Every coordinate of `obj` inside a volume of `shape`; a box's corners in order.
    axis: the slice axis (the box must have area across the other two)."""
    named = ([("box", obj.box[:3]), ("box", obj.box[3:])] if obj.box is not None else []) + \
        [("point", pt[:3]) for pt in obj.points]
    for what, p in named:
        for v, n, name in zip(p, shape, "xyz"):
            if not 0 <= v <= n - 1:
                shown = _numbers_text(obj.box if what == "box" else p)
                raise InputError(f"{what} {shown}: coordinate {name}={v:g} lies outside the "
                                 f"volume of shape {tuple(shape)} (voxel indices i, j, k start "
                                 "at 0)")
    _check_box_order(obj.box, 3, in_plane_axes(axis))


def _check_box_order(box: tuple[float, ...] | None, nd: int, plane: tuple[int, int]) -> None:
    """Corners in order (an inverted box was found only after the model had loaded); a box
    without area in the image plane (box axes `plane`: (0, 1) for a 2-D image or a volume
    sliced across z) segments from its edge alone: warn."""
    if box is None:
        return
    lo, hi = box[:nd], box[nd:]
    if any(a > b for a, b in zip(lo, hi)):
        order = "x0 <= x1, y0 <= y1" + (", z0 <= z1" if nd == 3 else "")
        raise InputError(f"box {_numbers_text(box)}: needs {order}")
    flat = [f"{'xyz'[a]}0 = {'xyz'[a]}1" for a in plane if lo[a] == hi[a]]
    if flat:
        warnings.warn(f"box {_numbers_text(box)} has no area in the slice plane "
                      f"({' and '.join(flat)}): the mask "
                      "follows a line, not a region; check the corners", stacklevel=4)


def label_dtype(objects: Sequence[ObjectPrompt]) -> np.dtype:
    """uint8 when every label fits, else uint16."""
    return np.dtype(np.uint8 if max((o.label for o in objects), default=1) < 256 else np.uint16)


def _check_xy(xy: np.ndarray, what: str, hw: tuple[int, int]) -> None:
    h, w = hw
    bad = (xy[..., 0] < 0) | (xy[..., 0] > w) | (xy[..., 1] < 0) | (xy[..., 1] > h)
    if bad.any():
        first = xy[np.argwhere(bad)[0][0]] if xy.ndim > 1 else xy
        raise InputError(f"{what} {np.round(first, 1).tolist()} lies outside the image "
                         f"(width {w}, height {h}; x is the column, y the row)")


def check_boxes(box: Sequence[float] | None, boxes: np.ndarray | None,
                hw: tuple[int, int]) -> np.ndarray | None:
    """One box (x0, y0, x1, y1) or (N, 4) boxes -> (N, 4) float32 inside an (H, W) image."""
    if box is None and boxes is None:
        return None
    b = np.asarray(boxes if boxes is not None else [box], dtype=np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise InputError(f"a box needs 4 numbers x0, y0, x1, y1; got shape {b.shape}")
    if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
        raise InputError(f"box {b[0].tolist()}: needs x0 <= x1 and y0 <= y1")
    _check_xy(b.reshape(-1, 2, 2), "box corner", hw)
    return b


def check_points(points: Any, labels: Any,
                 hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """[(x, y), ...] (one prompt) or (N, K, 2) points with labels -> ((N, K, 2) float32,
    (N, K) int64 labels, 1 foreground / 0 background), inside an (H, W) image."""
    if points is None:
        return None
    p = np.asarray(points, dtype=np.float32)
    if p.ndim == 2:
        p = p[None]  # one prompt with K points
    if p.ndim != 3 or p.shape[-1] != 2:
        raise InputError(f"points need (x, y) pairs; got shape {np.asarray(points).shape}")
    raw = np.ones(p.shape[:2]) if labels is None else np.asarray(labels, dtype=float)
    raw = raw.reshape(p.shape[:2]) if raw.size == p.shape[0] * p.shape[1] else raw
    if raw.shape != p.shape[:2]:
        raise InputError(f"{raw.size} point labels for {p.shape[0] * p.shape[1]} points")
    if not np.isin(raw, (0.0, 1.0)).all():  # checked before the cast: 0.7 is not 0
        raise InputError("point labels must be exactly 1 (foreground) or 0 (background)")
    lab = raw.astype(np.int64)
    _check_xy(p, "point", hw)
    return p, lab


def check_known_classes(names: Sequence[str], vocabulary: Sequence[str], param: str) -> None:
    """ParameterError for a class name the adapter was not trained on (as written, or in its
    normalised form: "Kidney_L" = "left kidney"), listing the nearest known names: an unknown
    name still gets a text embedding, whose prompt-free mask means nothing ("0 of 1 classes
    found"). No check when the adapter records no vocabulary."""
    import difflib

    from segmote.text.names import normalize_class_name

    known = {normalize_class_name(v): v for v in vocabulary}
    for name in names:
        if not known or name in vocabulary or normalize_class_name(name) in known:
            continue
        close = difflib.get_close_matches(normalize_class_name(name), list(known), n=3,
                                          cutoff=0.4)
        nearest = ", ".join(known[c] for c in close) or ", ".join(list(vocabulary)[:3])
        raise ParameterError(param, f"{{{param}}} {name!r}: the adapter does not know this "
                             f"class; nearest known: {nearest} ({len(vocabulary)} classes in "
                             "all)")
