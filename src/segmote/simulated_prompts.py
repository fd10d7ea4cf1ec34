"""Simulated prompts, shared by training and evaluation: boxes, central points, error clicks.

Everything works on one (H, W) bool mask at mask resolution (the decoder's low-res grid, 256 x 256
for every backbone here) and returns pixel coordinates on that grid, x = column, y = row (SAM's
convention). `to_model_coords` scales them to the padded model-input frame that `decode` expects.
All randomness comes from the `numpy.random.Generator` passed in, so a seed fixes every prompt.

Recipe (docs/method.md, "Training recipe"): a first prompt per sample — a tight box with each side
jittered (0.4), one positive point from the central part of the foreground (0.3), or text alone
(0.3: PPT tokens conditioned on the class name, i.e. prompt-free segmentation of that class; its
share rises over training, see `TrainConfig.progressive`) — a box or point sometimes with the
class name as well; then refinement rounds that add 1 / 3 / 4 / 7 clicks drawn from the error
region of the previous prediction (false negative -> positive click, false positive -> negative
click).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

PROMPT_KINDS = ("box", "point", "text")


@dataclass
class Prompt:
    """One simulated prompt at mask resolution.

    kind: "box", "point" or "text" (what the first prompt was).
    box: (4,) float32 x0, y0, x1, y1 (inclusive pixel indices) or None.
    points: (K, 2) float32 (x, y); labels: (K,) int64, 1 = foreground, 0 = background.
    text: the class name given as text (alone for kind "text", else beside the box / points),
        or None.
    """

    kind: str
    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    text: str | None = None

    @property
    def auto(self) -> bool:
        """Prompt-free (PPT tokens): text alone, no box or clicks yet."""
        return self.kind == "text" and self.box is None and not len(self.labels)

    def add_clicks(self, points: np.ndarray, labels: np.ndarray) -> None:
        """Append refinement clicks (a user keeps earlier clicks and adds new ones)."""
        self.points = np.concatenate([self.points, points]).astype(np.float32)
        self.labels = np.concatenate([self.labels, labels]).astype(np.int64)


def _check(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("cannot place a prompt on an empty mask")
    return mask


def tight_box(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (4,) float32 x0, y0, x1, y1: the foreground's extreme pixel indices."""
    ys, xs = np.nonzero(_check(mask))
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, max_frac: float = 0.1) -> np.ndarray:
    """Tight box with each side moved independently by up to `max_frac` of the box extent
    (at least 1 pixel), in or out, then clipped to the grid and kept ordered. -> (4,) float32."""
    x0, y0, x1, y1 = tight_box(mask)
    h, w = mask.shape
    mx = max(1, int(round(max_frac * (x1 - x0 + 1))))
    my = max(1, int(round(max_frac * (y1 - y0 + 1))))
    dx0, dx1 = rng.integers(-mx, mx + 1, size=2)
    dy0, dy1 = rng.integers(-my, my + 1, size=2)
    nx0, nx1 = np.clip([x0 + dx0, x1 + dx1], 0, w - 1)
    ny0, ny1 = np.clip([y0 + dy0, y1 + dy1], 0, h - 1)
    # an inward jitter on a thin object could cross the sides over: keep x0 <= x1, y0 <= y1
    return np.array([min(nx0, nx1), min(ny0, ny1), max(nx0, nx1), max(ny0, ny1)], np.float32)


def interior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the nearest background pixel or to the
    grid border (the border counts as boundary: a click on the image edge is not "central").
    (H, W) bool -> (H, W) float64, 0 on background."""
    padded = np.pad(np.asarray(mask, bool), 1)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def _pick_interior(dist: np.ndarray, region: np.ndarray, rng: np.random.Generator,
                   central_frac: float, n: int) -> np.ndarray:
    """n distinct (if possible) pixels of `region` whose distance is >= central_frac * its max.
    -> (n, 2) float32 (x, y)."""
    d = np.where(region, dist, 0.0)
    ys, xs = np.nonzero(d >= central_frac * d.max())
    ys, xs = ys[d[ys, xs] > 0], xs[d[ys, xs] > 0]
    idx = rng.choice(len(ys), size=n, replace=n > len(ys))
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float32)


def central_point(mask: np.ndarray, rng: np.random.Generator,
                  central_frac: float = 0.5) -> np.ndarray:
    """One positive point from the central part of the foreground: a pixel whose distance to the
    boundary is at least `central_frac` of the largest such distance. -> (2,) float32 (x, y)."""
    mask = _check(mask)
    return _pick_interior(interior_distance(mask), mask, rng, central_frac, 1)[0]


def error_clicks(pred: np.ndarray, gt: np.ndarray, k: int, rng: np.random.Generator,
                 central_frac: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """k clicks that correct `pred` towards `gt`, as an annotator would place them.

    Error regions are the connected components of the false negatives (-> positive click, label 1)
    and of the false positives (-> negative click, label 0), largest first; clicks go round-robin
    over the k largest regions, each in the central part of its region (distance to the region's
    boundary >= central_frac of the region's maximum), so they stay clear of ambiguous edges.
    pred, gt: (H, W) bool. Returns points (n, 2) float32 (x, y) and labels (n,) int64, n = k, or
    n = 0 when the prediction is already perfect.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    regions: list[tuple[int, np.ndarray, int, np.ndarray]] = []  # size, component, label, dist
    for err, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not err.any():
            continue
        comps, n = ndimage.label(err)
        dist = interior_distance(err)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        for c in range(1, n + 1):
            regions.append((int(sizes[c]), comps == c, label, dist))
    if not regions or k <= 0:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.int64)
    # largest first; ties broken by order found (FN before FP) so the result is deterministic
    order = sorted(range(len(regions)), key=lambda i: -regions[i][0])[:k]
    per_region = [k // len(order) + (i < k % len(order)) for i in range(len(order))]
    points, labels = [], []
    for i, n in zip(order, per_region):
        _, comp, label, dist = regions[i]
        points.append(_pick_interior(dist, comp, rng, central_frac, n))
        labels.append(np.full(n, label, np.int64))
    return np.concatenate(points), np.concatenate(labels)


def prompt_probabilities(probs: Mapping[str, float], allow_text: bool) -> dict[str, float]:
    """Normalised {kind: probability}; without a text encoder the text share is spread over the
    other kinds in proportion (box 0.4 / point 0.3 / text 0.3 -> box 4/7, point 3/7)."""
    unknown = sorted(set(probs) - set(PROMPT_KINDS))
    if unknown:
        raise ValueError(f"unknown prompt kind(s) {', '.join(unknown)}")
    p = {k: float(probs.get(k, 0.0)) for k in PROMPT_KINDS if allow_text or k != "text"}
    total = sum(p.values())
    if total <= 0 or min(p.values()) < 0:
        raise ValueError(f"prompt probabilities must be >= 0 with a positive sum, got {probs}")
    return {k: v / total for k, v in p.items()}


def sample_prompt(mask: np.ndarray, rng: np.random.Generator, probs: Mapping[str, float],
                  box_jitter: float = 0.1, allow_text: bool = False,
                  class_name: str | None = None, text_with_prompt: float = 0.0) -> Prompt:
    """The first prompt of a training sample, its kind drawn from `probs` (see module doc).

    mask: (H, W) bool target at mask resolution (may be empty only for a "text" prompt).
    allow_text: the model takes text (and PPT); else the text share goes to box / point.
    class_name: the text of a text prompt; with probability `text_with_prompt` a box or point
        prompt carries it too (only when allow_text: without text the draws stay as before).
    """
    p = prompt_probabilities(probs, allow_text)
    kinds = list(p)
    kind = kinds[int(rng.choice(len(kinds), p=[p[k] for k in kinds]))]
    if kind == "text":
        return Prompt("text", text=class_name)
    if kind == "box":
        prompt = Prompt("box", box=jittered_box(mask, rng, box_jitter))
    else:
        prompt = Prompt("point", points=central_point(mask, rng)[None],
                        labels=np.ones(1, np.int64))
    if allow_text and text_with_prompt > 0 and rng.random() < text_with_prompt:
        prompt.text = class_name
    return prompt


def to_model_coords(xy: np.ndarray, mask_size: int, img_size: int) -> np.ndarray:
    """Mask-resolution pixel coordinates (points (..., 2) or boxes (..., 4)) -> the padded
    model-input frame (x img_size / mask_size: x1 for LiteMedSAM, x4 for SAM's 1024 input)."""
    return np.asarray(xy, dtype=np.float32) * np.float32(img_size / mask_size)
