"""A click read as a box: segment the key slice of a one-click prompt from boxes around it.

LiteMedSAM (MedSAM) was trained with box prompts only: a click alone gives its decoder a near
empty mask (mean 2-D Dice 0.014 on the key slices of the 3-D report objects; the default
adapter, trained with points too, 0.29). SAM's decoder also scores its own mask (the predicted
IoU). So a click is decoded with square boxes of several sizes centred on it, each with the
click(s) as point prompts, and of the masks scored within `CLICK_SCORE_SLACK` of the best the
one of the smallest box is kept. On the key slices of the validation objects this gave
0.656 / 0.640 (adapter / base) against 0.447 / 0.005 for the click alone, and 0.590 / 0.481
against 0.293 / 0.014 on the report objects (`benchmarks/bench_click_box.py`,
docs/benchmarks.md "a followed click read as a box").

Used for the key slice of a click prompt that is followed through a volume
(`PropagationConfig.click_box`); a click on a 2-D image, or on one slice without propagation,
is decoded as given (the choice above was made on key slices of 3-D objects only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segmote.errors import InputError
from segmote.predict.prompts import check_points

# half-sizes (pixels of the slice as read) of the square boxes tried around a click; the grid
# of the validation run (small AAL structures on 1 mm MR up to tumours on 512 x 512 CT)
CLICK_HALF_SIZES: tuple[int, ...] = (6, 10, 16, 24, 32, 48, 64, 96)
# the smallest box whose predicted IoU is within this of the best is kept: a click is most
# often meant for the smallest object around it (a tumour, not the lung that holds it), and
# the predicted IoU favours large boxes holding a whole organ (chosen on validation key slices)
CLICK_SCORE_SLACK: float = 0.02


def click_boxes(center: Sequence[float], hw: tuple[int, int],
                half_sizes: Sequence[int] = CLICK_HALF_SIZES) -> np.ndarray:
    """(N, 4) boxes (x0, y0, x1, y1) of the given half-sizes centred on `center` (x, y),
    clipped to an (H, W) image; boxes that clip to the same box are kept once."""
    x, y = float(center[0]), float(center[1])
    h, w = hw
    boxes = [(max(0.0, x - s), max(0.0, y - s), min(w - 1.0, x + s), min(h - 1.0, y + s))
             for s in half_sizes]
    return np.asarray(list(dict.fromkeys(boxes)), dtype=np.float32)


def is_click_prompt(prompt: dict[str, Any]) -> bool:
    """Is a `Segmenter.predict` prompt (keywords) clicks alone, at least one of them
    foreground? (A box, a mask or text beside the clicks: decoded as given.)"""
    given = {k for k, v in prompt.items() if v is not None}
    if "points" not in given or given - {"points", "labels"}:
        return False
    labels = prompt.get("labels")
    return labels is None or bool((np.asarray(labels) == 1).any())


def predict_click(seg: Any, points: Any, labels: Any = None,
                  half_sizes: Sequence[int] = CLICK_HALF_SIZES,
                  slack: float = CLICK_SCORE_SLACK, **decode_kwargs: Any) -> Any:
    """The `Prediction` of the smallest box around the clicks whose predicted IoU is within
    `slack` of the best box's (0: the best-scored box) on the current image.

    seg: a `Segmenter` with an image set. points: [(x, y), ...] in the image's pixels;
    labels: 1 foreground / 0 background (default all 1). The boxes are centred on the mean of
    the foreground clicks; every box is decoded with all the clicks (one batched decode), and
    the winner is decoded again on its own so the result is exactly a single prompt's.
    """
    if seg.features is None:
        raise InputError("call set_image() before predict_click()")
    # the clicks checked as `predict` checks them (inside the image, labels 0 / 1) before any
    # box is built around them
    checked = check_points(points, labels, seg.geometry.orig_hw)
    if checked is None or checked[0].shape[0] != 1:
        raise InputError("a click prompt is one list of (x, y) points")
    pts, lab = checked[0][0], checked[1][0]
    if not (lab == 1).any():
        raise InputError("a click prompt needs at least one foreground (label 1) point")
    boxes = click_boxes(pts[lab == 1].mean(axis=0), seg.geometry.orig_hw, half_sizes)
    n = len(boxes)
    tried = seg.predict(boxes=boxes, points=np.repeat(pts[None], n, axis=0),
                        labels=np.repeat(lab[None], n, axis=0), **decode_kwargs)
    score = np.asarray(tried.score)
    best = int(np.flatnonzero(score >= score.max() - slack)[0])  # boxes grow with the index
    return seg.predict(box=tuple(float(v) for v in boxes[best]), points=pts, labels=lab,
                       **decode_kwargs)
