"""Budgeted selection balanced over modality x class cells, seeded.

The budget is split over the cells in proportion to their weights (default 1 each; with `power`
p > 0 a cell's weight is multiplied by (its accepted samples) ** p, the temperature sampling
`segmote train` uses for its `balance_power`: 0.5 gives shares proportional to the square root
of a cell's size, 1 shares proportional to its size, as a uniform draw), by water-filling: a
cell with fewer accepted samples than its share gives everything it has and the rest is shared
again among the others, until the budget or the samples run out. Within a cell, samples are
drawn without replacement with probability proportional to their quality score (Efraimidis-
Spirakis keys u^(1/q)), so the best samples are likely, but not certain, to be taken and a cell
is not filled with near-identical top scorers only. Same inputs and seed -> same selection.

`by="modality"` (the default) balances in two levels: each modality first gets the same share,
split equally among its classes (a cell's weight is divided by the number of classes of its
modality). With cells alone (`by="cell"`), one atlas of 116 structures in one modality takes 116
shares of the budget and a one-class dataset of another modality one share; by modality, a
modality whose cells run out hands its remainder to the others by the same water-filling. With
one modality the two are the same. The default was chosen on validation cases inside a pooled
training set, not on held-out data (benchmarks/curation/bench_curation_mixed.py --validation).
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from segmote.errors import InputError, ParameterError

Cell = tuple[str, str]  # (modality, class name)
UNKNOWN_MODALITY = "unknown"
BALANCE_LEVELS = ("cell", "modality")


def parse_budget(text: str | int, total: int) -> int:
    """'5000' -> 5000; '1%' -> 1 % of `total` (rounded, at least 1). InputError otherwise."""
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            pct = float(raw[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, round(total * pct / 100))
        n = int(raw)
        if n <= 0:
            raise ValueError
        return n
    except ValueError:
        raise ParameterError("budget", "{budget}: expected a positive count (5000) or a "
                             f"percentage in (0, 100] (1%), got {raw!r}") from None


def parse_weights(items: Sequence[str]) -> dict[str, float]:
    """['MR/*=2', '*/tumour=0.5'] -> {pattern: weight}; patterns are 'modality/class' with
    shell wildcards. InputError on a malformed item."""
    out: dict[str, float] = {}
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if not sep or "/" not in pattern or not math.isfinite(w) or w < 0:
            raise ParameterError("weights", "{weights}: expected MODALITY/CLASS=WEIGHT (wildcards "
                                 f"allowed, weight >= 0), got {item!r}")
        out[pattern] = w
    return out


def cell_weight(cell: Cell, weights: dict[str, float]) -> float:
    """The weight of the last pattern matching 'modality/class' (later patterns win), else 1."""
    key = f"{cell[0]}/{cell[1]}"
    w = 1.0
    for pattern, value in weights.items():
        if fnmatch.fnmatchcase(key, pattern):
            w = value
    return w


def check_balance(by: str) -> None:
    """InputError unless `by` is one of BALANCE_LEVELS."""
    if by not in BALANCE_LEVELS:
        raise InputError(f"balance must be one of {', '.join(BALANCE_LEVELS)}, got {by!r}")


def allocate(capacity: np.ndarray, weights: np.ndarray, budget: int) -> np.ndarray:
    """Integer quota per cell: proportional to `weights`, capped by `capacity`, summing to
    min(budget, capacity of the cells with weight > 0). Each round gives every active cell the
    floor of its share of what is left; when every share is below 1, the units left go one each
    to the largest shares (ties: the lower index). So a leftover unit goes to the largest share,
    not to the largest fractional remainder (shares 55.2 / 15.6 / 19.1 give 56 / 15 / 19)."""
    capacity = np.asarray(capacity, np.int64)
    weights = np.asarray(weights, np.float64)
    alloc = np.zeros_like(capacity)
    active = (capacity > 0) & (weights > 0)
    remaining = int(min(budget, capacity[active].sum()))
    while remaining > 0 and active.any():
        share = np.zeros(len(capacity))
        share[active] = remaining * weights[active] / weights[active].sum()
        # + 1e-9: a share that is a whole number in exact arithmetic (weights 1/10 summing to
        # 0.9999999999999999) must not floor to one less
        give = np.minimum(np.floor(share + 1e-9).astype(np.int64), capacity - alloc)
        if give.sum() == 0:  # every share < 1: one each, largest shares first
            order = np.lexsort((np.arange(len(share)), -share))
            for i in order[:remaining]:
                if active[i]:
                    give[i] = 1
        alloc += give
        remaining -= int(give.sum())
        active &= alloc < capacity
    return alloc


def select_balanced(cells: Sequence[Cell], quality: Sequence[float], budget: int, seed: int,
                    weights: dict[str, float] | None = None, power: float = 0.0,
                    by: str = "modality") -> np.ndarray:
    """Indices (sorted) of the selected samples among `cells` (one cell per sample).

    quality: > 0 raises a sample's chance within its cell (0 or less: drawn last).
    power: cell weights are multiplied by (samples in the cell) ** power (0: equal shares).
    by: "modality" (every modality the same share, split among its cells; the default) or
        "cell" (every cell the same share)."""
    check_balance(by)
    weights = weights or {}
    names = sorted(set(cells))
    members: dict[Cell, list[int]] = {c: [] for c in names}
    for i, c in enumerate(cells):
        members[c].append(i)
    cap = np.array([len(members[c]) for c in names])
    w = np.array([cell_weight(c, weights) for c in names]) * cap.astype(np.float64) ** power
    if by == "modality":
        classes = Counter(m for m, _ in names)
        w /= np.array([classes[m] for m, _ in names], np.float64)
    quota = allocate(cap, w, budget)
    rng = np.random.default_rng(seed)
    q = np.asarray(quality, np.float64)
    chosen: list[int] = []
    for c, n in zip(names, quota.tolist()):
        idx = np.asarray(members[c])
        u = rng.random(len(idx))  # drawn for every cell, so one cell's quota moves no other
        if n == 0:
            continue
        # log of Efraimidis-Spirakis key u^(1/q); non-positive quality sorts last
        key = np.where(q[idx] > 0, np.log(np.maximum(u, 1e-300)) / np.maximum(q[idx], 1e-12),
                       -np.inf)
        top = np.lexsort((idx, -key))[:n]
        chosen += idx[top].tolist()
    return np.array(sorted(chosen), np.int64)
