"""Confidence calibration of automatic (prompt-free) segmentation.

Asked for a class, the automatic mode returns a mask and a confidence (the selected expert
token's predicted IoU). A class absent from the image should give no mask: the mask is kept only
when its confidence reaches a threshold chosen on calibration data, with present classes (their
Dice counts) and absent classes (a non-empty mask is a false positive). Confidences are binned
(100 bins on [0, 1]) so ranks can sum their histograms with one all-reduce.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BINS = 100


def _bin(conf: float) -> int:
    return int(min(max(conf, 0.0), 1.0 - 1e-9) * BINS)


class CalibrationCounts:
    """Histograms over confidence bins: Dice of present-class masks, false positives of
    absent-class masks, and the row counts. `array` / `from_array` for all-reduce."""

    def __init__(self) -> None:
        self.present_dice = np.zeros(BINS)
        self.absent_fp = np.zeros(BINS)
        self.n_present = 0
        self.n_absent = 0

    def add_present(self, dice: float, conf: float) -> None:
        self.present_dice[_bin(conf)] += dice
        self.n_present += 1

    def add_absent(self, nonempty: bool, conf: float) -> None:
        self.absent_fp[_bin(conf)] += float(nonempty)
        self.n_absent += 1

    def array(self) -> np.ndarray:
        return np.concatenate([self.present_dice, self.absent_fp, [self.n_present, self.n_absent]])

    @classmethod
    def from_array(cls, a: np.ndarray) -> CalibrationCounts:
        c = cls()
        c.present_dice, c.absent_fp = a[:BINS].copy(), a[BINS:2 * BINS].copy()
        c.n_present, c.n_absent = int(a[-2]), int(a[-1])
        return c


@dataclass
class Calibration:
    """The chosen threshold and what it gives on the calibration data.

    threshold: keep an automatic mask when its confidence >= threshold.
    fp_rate: share of absent-class queries that still give a non-empty mask at the threshold
        (fp_rate_raw: without a threshold). dice / dice_raw: mean Dice of present-class queries
        with / without the threshold (a dropped mask scores 0). n_present, n_absent: queries.
    """

    threshold: float
    fp_rate: float | None
    fp_rate_raw: float | None
    dice: float | None
    dice_raw: float | None
    n_present: int
    n_absent: int
    target_fp_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(counts: CalibrationCounts, target_fp_rate: float = 0.05) -> Calibration:
    """The lowest threshold whose false-positive rate on absent classes is <= target_fp_rate
    (so as few present-class masks as possible are dropped); 0 without absent queries."""
    fp_tail = np.cumsum(counts.absent_fp[::-1])[::-1]  # FPs kept by threshold bin j
    dice_tail = np.cumsum(counts.present_dice[::-1])[::-1]
    fp = fp_tail / counts.n_absent if counts.n_absent else np.zeros(BINS)
    dice = dice_tail / counts.n_present if counts.n_present else np.full(BINS, np.nan)
    ok = np.nonzero(fp <= target_fp_rate)[0]
    j = int(ok[0]) if len(ok) else BINS - 1

    def num(x: float) -> float | None:
        return None if np.isnan(x) else round(float(x), 4)

    return Calibration(j / BINS, num(fp[j]) if counts.n_absent else None,
                       num(fp[0]) if counts.n_absent else None, num(dice[j]), num(dice[0]),
                       counts.n_present, counts.n_absent, target_fp_rate)
