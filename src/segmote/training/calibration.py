"""Calibration of text and automatic (prompt-free) segmentation: a mask threshold per class, a
confidence threshold, and whether the text is used beside a box.

Asked for a class, the automatic mode returns mask logits and a confidence (the selected expert
token's predicted IoU). Three things are chosen on calibration data (training slices or
validation cases, `calibrate_on`):

1. **Mask offset per class.** A prompt-free mask is `logits + offset > 0`. Trained with focal +
   Dice loss on few steps, the PPT logits of a class can have the right shape but sit too low
   or too high (the nuclei logits of the default adapter are about 0.5 too low). For each
   class the offset on a grid (`OFFSETS`) with the best mean Dice over all its queries is
   kept when it beats offset 0 by at least `MIN_GAIN` (otherwise 0: a few noisy samples should
   not move a threshold). Queries for an absent class count too, with Dice 1 for an empty mask
   and 0 for any other (the Dice of an empty target), so a lower threshold that finds a
   little more of a class but fires where it is absent is not chosen. Classes with no query,
   and names the adapter never saw, get the offset chosen the same way on all queries pooled.
2. **Confidence threshold.** A class absent from the image should give no mask: the mask is
   kept only when its confidence reaches the lowest threshold whose false-positive rate on
   absent-class queries (a non-empty mask, at the class's offset) is <= a target.
3. **Text beside a box.** Beside a box or points the prompt is decoded with the class name as
   one more prompt token and without it, and the two are averaged
   (`segmote.modeling.text_ensemble`). Each present-class query is also decoded that
   way with its tight box; the text is used beside spatial prompts when the average is not
   worse than the box alone over all queries pooled. One decision for all classes, not one
   per class: with a handful of queries per class a per-class choice follows noise (the
   default adapter's tumour text gained 0.034 Dice on its 6 MR training queries and lost 0.012
   on the held-out MR patient when it was used as a token alone).

Everything is kept as sums (histograms over (class, offset, confidence bin), per-class box
Dice sums) so DDP ranks can add them with one all-reduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

BINS = 100
OFFSETS = np.round(np.arange(-2.0, 2.0001, 0.25), 2)  # logit offsets tried per class
ZERO = int(np.argmin(np.abs(OFFSETS)))
MIN_GAIN = 0.01  # mean-Dice gain an offset needs over 0 to be kept


def _bin(conf: float) -> int:
    return int(min(max(conf, 0.0), 1.0 - 1e-9) * BINS)


def offset_dice(logits: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Dice of `logits + o > 0` for every o in OFFSETS.

    logits: (B, H, W) float; gt: (B, H, W) bool. -> (B, len(OFFSETS)); 1 where both are empty.
    """
    from segmote.training.step import dice_scores

    return np.stack([dice_scores(logits > -o, gt) for o in OFFSETS], axis=1)


def offset_nonempty(logits: np.ndarray) -> np.ndarray:
    """(B, H, W) logits -> (B, len(OFFSETS)) bool: is `logits + o > 0` non-empty."""
    peak = logits.reshape(len(logits), -1).max(1)
    return peak[:, None] > -OFFSETS[None, :]


class CalibrationCounts:
    """Histograms over (class, offset, confidence bin): Dice sums of present-class queries and
    false positives of absent-class queries, plus per-class query counts.
    `array` / `from_array` for all-reduce."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self._index = {c: i for i, c in enumerate(self.classes)}
        shape = (len(self.classes), len(OFFSETS), BINS)
        self.present_dice = np.zeros(shape)
        self.absent_fp = np.zeros(shape)
        self.n_present = np.zeros(len(self.classes))
        self.n_absent = np.zeros(len(self.classes))
        # per class: Dice sums of box-prompted queries without / with the text, and their count
        self.box = np.zeros((3, len(self.classes)))

    def add_present(self, name: str, dice: np.ndarray | float, conf: float) -> None:
        """dice: (len(OFFSETS),) Dice at each offset (`offset_dice`), or one value for all."""
        i = self._index[name]
        self.present_dice[i, :, _bin(conf)] += dice
        self.n_present[i] += 1

    def add_absent(self, name: str, nonempty: np.ndarray | bool, conf: float) -> None:
        """nonempty: (len(OFFSETS),) bool (`offset_nonempty`), or one value for all."""
        i = self._index[name]
        self.absent_fp[i, :, _bin(conf)] += np.asarray(nonempty, dtype=float)
        self.n_absent[i] += 1

    def add_box(self, name: str, dice_box: float, dice_box_text: float) -> None:
        """One present-class query decoded with its box, without and with the class text."""
        i = self._index[name]
        self.box[:, i] += (dice_box, dice_box_text, 1.0)

    def array(self) -> np.ndarray:
        return np.concatenate([self.present_dice.ravel(), self.absent_fp.ravel(),
                               self.n_present, self.n_absent, self.box.ravel()])

    @classmethod
    def from_array(cls, a: np.ndarray, classes: Sequence[str]) -> CalibrationCounts:
        c = cls(classes)
        size = c.present_dice.size
        c.present_dice = a[:size].reshape(c.present_dice.shape).copy()
        c.absent_fp = a[size:2 * size].reshape(c.absent_fp.shape).copy()
        k = len(c.classes)
        rest = a[2 * size:]
        c.n_present, c.n_absent = rest[:k].copy(), rest[k:2 * k].copy()
        c.box = rest[2 * k:].reshape(3, k).copy()
        return c


@dataclass
class Calibration:
    """The chosen offsets and threshold and what they give on the calibration data.

    threshold: keep an automatic mask when its confidence >= threshold.
    mask_offsets: class -> logit offset, for the classes whose offset is not the default
        (keys as in the training data); mask_offset_default: every other class.
    text_beside_prompt_default: whether the text is used beside a box / points (averaged with
        the box alone, `text_ensemble`). text_beside_prompt: per-class exceptions (empty: kept
        so that older adapters' per-class choices still load). box_dice / box_text_dice /
        box_text_dice_kept: mean Dice of the box-prompted queries with the box alone, with the
        text always, and with the text where used.
    fp_rate: share of absent-class queries that still give a non-empty mask at the offsets and
        threshold (fp_rate_raw: without a threshold). dice / dice_raw: mean Dice of
        present-class queries with / without the threshold (a dropped mask scores 0), both at
        the offsets; dice_no_offset: without threshold and offsets. n_present, n_absent: queries.
    """

    threshold: float
    fp_rate: float | None
    fp_rate_raw: float | None
    dice: float | None
    dice_raw: float | None
    n_present: int
    n_absent: int
    target_fp_rate: float
    dice_no_offset: float | None = None
    mask_offset_default: float = 0.0
    mask_offsets: dict[str, float] = field(default_factory=dict)
    text_beside_prompt_default: bool = True
    text_beside_prompt: dict[str, bool] = field(default_factory=dict)
    box_dice: float | None = None
    box_text_dice: float | None = None
    box_text_dice_kept: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _best_offset(dice_sum: np.ndarray, n: float) -> int:
    """Index into OFFSETS of the best mean Dice (dice_sum: (len(OFFSETS),) summed over n
    queries), ZERO unless it gains MIN_GAIN; among equals the one nearest 0."""
    if n <= 0:
        return ZERO
    mean = dice_sum / n
    order = np.argsort(np.abs(OFFSETS), kind="stable")  # nearest 0 first wins ties
    best = int(order[np.argmax(mean[order])])
    return best if mean[best] - mean[ZERO] >= MIN_GAIN else ZERO


def choose_calibration(counts: CalibrationCounts, target_fp_rate: float = 0.05) -> Calibration:
    """Per-class mask offsets, then the lowest confidence threshold whose false-positive rate
    on absent classes is <= target_fp_rate (so as few present-class masks as possible are
    dropped; 0 without absent queries)."""
    per_class = counts.present_dice.sum(2)  # (C, O)
    # Dice summed over every query of a class: present ones, plus absent ones left empty
    score = per_class + counts.n_absent[:, None] - counts.absent_fp.sum(2)
    n_q = counts.n_present + counts.n_absent
    n_p, n_a = float(counts.n_present.sum()), float(counts.n_absent.sum())
    default = _best_offset(score.sum(0), float(n_q.sum()))
    pick = np.array([_best_offset(score[i], n_q[i]) if n_q[i] > 0 else default
                     for i in range(len(counts.classes))], dtype=int)
    rows = np.arange(len(counts.classes))
    present = counts.present_dice[rows, pick].sum(0) if len(rows) else np.zeros(BINS)
    absent = counts.absent_fp[rows, pick].sum(0) if len(rows) else np.zeros(BINS)
    fp_tail = np.cumsum(absent[::-1])[::-1]  # FPs kept by threshold bin j
    dice_tail = np.cumsum(present[::-1])[::-1]
    fp = fp_tail / n_a if n_a else np.zeros(BINS)
    dice = dice_tail / n_p if n_p else np.full(BINS, np.nan)
    ok = np.nonzero(fp <= target_fp_rate)[0]
    j = int(ok[0]) if len(ok) else BINS - 1

    def num(x: float) -> float | None:
        return None if np.isnan(x) else round(float(x), 4)

    no_offset = per_class[:, ZERO].sum() / n_p if n_p else np.nan
    offsets = {c: float(OFFSETS[k]) for c, k in zip(counts.classes, pick) if k != default}
    # text beside a box: used when it is not worse over all box queries pooled
    plain, with_text, n_box = counts.box
    text_default = bool(with_text.sum() >= plain.sum())
    nb = float(n_box.sum())
    kept_dice = (with_text if text_default else plain).sum() / nb if nb else np.nan
    return Calibration(j / BINS, num(fp[j]) if n_a else None, num(fp[0]) if n_a else None,
                       num(dice[j]), num(dice[0]), int(n_p), int(n_a), target_fp_rate,
                       num(no_offset), float(OFFSETS[default]), offsets, text_default,
                       {},
                       num(plain.sum() / nb if nb else np.nan),
                       num(with_text.sum() / nb if nb else np.nan), num(kept_dice))
