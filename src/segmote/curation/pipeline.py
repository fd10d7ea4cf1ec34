"""`curate()`: score -> reject -> remove near-duplicates -> balanced budget, in that order.

    result = curate(discover(dirs), CurationConfig(budget="5000"), cache=EmbeddingCache(...))

The embedding cache is needed only for redundancy removal (`dedup=True`); it is built for the
samples that pass the quality rules, so rejected samples cost no encoder pass.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from segmote.curation.candidates import Candidate, enumerate_candidates
from segmote.curation.redundancy import MASK_DIMS, near_duplicates, sample_vectors
from segmote.curation.scores import QualityThresholds
from segmote.curation.select import (UNKNOWN_MODALITY, Cell, check_balance, parse_budget,
                                     parse_weights, select_balanced)
from segmote.data.datasets import DatasetInfo, SliceSample
from segmote.errors import InputError


@dataclass
class CurationConfig:
    """Curation settings.

    budget: "5000" (samples) or "1%" (of all enumerated masks, rejected ones included).
    seed: the within-cell draw (and the LSH planes for very large classes).
    axes: volumes are cut along each of these axes (2 = axial for RAS volumes, what `segmote
        train` uses; [0, 1, 2] adds sagittal and coronal planes; a manifest entry names its axis).
    weights: ["MODALITY/CLASS=W", ...] cell weights (shell wildcards; default 1 each).
    balance_power: each cell's weight is also multiplied by (its accepted samples) **
        balance_power: 0 (default) gives every (modality, class) cell the same share, 0.5 shares
        proportional to the square root of a cell's size (temperature sampling), 1 shares
        proportional to its size.
    balance: "modality" (default): every modality the same share, split equally among its
        classes (two-level balance); "cell": every (modality, class) cell the same share.
        Chosen on validation cases inside a pooled training set (bench_curation_mixed.py
        --validation: 0.696 vs 0.685 mean over datasets, 2 seeds; docs/curation.md).
    thresholds: overrides of `QualityThresholds` fields.
    dedup: remove near-duplicates (needs the encoder's embeddings).
    dup_threshold, mask_threshold: two samples of a class are duplicates when the cosine of
        their vectors (`redundancy`) is >= dup_threshold and that of their mask-occupancy parts
        >= mask_threshold. Measured with LiteMedSAM on Colin27/AAL
        (benchmarks/curation/bench_curation.py):
        copies of a slice re-saved, brightened or with Gaussian noise (sigma 2 grey levels) and
        the same mask score >= 0.9716 (mask part 1.0); slices 8 mm apart score up to 0.9875 but
        their mask parts <= 0.984; 1 mm neighbouring slices median 0.992 (mask part 0.996).
        0.96 / 0.999 drop the copies with margin, keep slices 8 mm apart, and drop a 1 mm
        neighbour only where the mask is all but unchanged. (0.99, the first default, also
        thinned 1 mm stacks where a structure changes little; on a validation block pattern
        inside the AAL training pool that cost 0.023 held-out Dice against 0.999:
        `bench_curation.py policy`, docs/curation.md.)
    window: CT window for scoring and encoding (None: the modality default).
    """

    budget: str = "100%"
    seed: int = 0
    axes: list[int] = field(default_factory=lambda: [2])
    weights: list[str] = field(default_factory=list)
    balance_power: float = 0.0
    balance: str = "modality"
    thresholds: dict[str, float] = field(default_factory=dict)
    dedup: bool = True
    dup_threshold: float = 0.96
    mask_threshold: float = 0.999
    window: str | None = None

    def validate(self) -> CurationConfig:
        for name in ("dup_threshold", "mask_threshold", "balance_power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{name} must be a number, got {value!r}")
        for name in ("dup_threshold", "mask_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise InputError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.balance_power <= 1:
            raise InputError(f"balance_power must be in [0, 1], got {self.balance_power}")
        check_balance(self.balance)
        if not self.axes or any(a not in (0, 1, 2) for a in self.axes) \
                or len(set(self.axes)) != len(self.axes):
            raise InputError(f"axes must be distinct values of 0, 1, 2, got {self.axes}")
        parse_weights(self.weights)
        QualityThresholds.from_dict(self.thresholds, "thresholds")
        return self


@dataclass
class CurationResult:
    """What `curate` decided. selected: indices into candidates; timings in seconds."""

    candidates: list[Candidate]
    selected: list[int]
    budget: int
    config: CurationConfig
    datasets: list[DatasetInfo]
    timings: dict[str, float] = field(default_factory=dict)
    degenerate_planes: int = 0

    def rejected(self) -> list[int]:
        return [i for i, c in enumerate(self.candidates) if c.reason is not None]

    def reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(c.reason for c in self.candidates
                                   if c.reason is not None).items()))

    def balance(self, indices: list[int] | None = None) -> dict[str, dict[str, int]]:
        """modality -> class -> count, over `indices` (default: every non-empty candidate)."""
        if indices is None:
            indices = [i for i, c in enumerate(self.candidates) if c.sample.foreground > 0]
        table: dict[str, dict[str, int]] = {}
        for i in indices:
            m, cls = cell_of(self.candidates[i])
            table.setdefault(m, {}).setdefault(cls, 0)
            table[m][cls] += 1
        return {m: dict(sorted(v.items())) for m, v in sorted(table.items())}

    def summary(self) -> dict[str, Any]:
        accepted = sum(c.reason is None for c in self.candidates)
        return {"candidates": len(self.candidates), "selected": len(self.selected),
                "rejected": len(self.candidates) - accepted,
                "accepted_not_selected": accepted - len(self.selected),
                "budget": self.budget, "rejected_by_reason": self.reasons(),
                "degenerate_planes": self.degenerate_planes,
                "balance_before": self.balance(),
                "balance_after": self.balance(self.selected),
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


def cell_of(c: Candidate) -> Cell:
    return (c.sample.modality or UNKNOWN_MODALITY, c.sample.class_name)


def curate(datasets: list[DatasetInfo], config: CurationConfig, cache: Any = None,
           progress: bool = False,
           include: Callable[[SliceSample], bool] | None = None) -> CurationResult:
    """Run the curation on discovered datasets; `cache` (an `EmbeddingCache`) is required when
    config.dedup is set. include: keep only the candidates it accepts (e.g. the training cases
    of a split, so that nothing of the held-out patients is curated or selected).
    Returns every candidate with its decision."""
    config.validate()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    thresholds = QualityThresholds.from_dict(config.thresholds, "thresholds")
    found = enumerate_candidates(datasets, config.axes, thresholds, config.window, progress)
    cands = [c for c in found.candidates if include is None or include(c.sample)]
    timings["score"] = time.perf_counter() - t
    if not cands:
        raise InputError("the dataset folders hold no labelled mask to curate")
    budget = parse_budget(config.budget, len(cands))
    if config.dedup:
        if cache is None:
            raise ValueError("dedup needs an embedding cache")
        _remove_duplicates(cands, cache, config, timings, progress)
    t = time.perf_counter()
    ok = [i for i, c in enumerate(cands) if c.reason is None]
    picked = select_balanced([cell_of(cands[i]) for i in ok], [cands[i].quality for i in ok],
                             budget, config.seed, parse_weights(config.weights),
                             config.balance_power, config.balance)
    timings["select"] = time.perf_counter() - t
    return CurationResult(cands, [ok[j] for j in picked.tolist()], budget, config, datasets,
                          timings, found.degenerate_planes)


def _remove_duplicates(cands: list[Candidate], cache: Any, config: CurationConfig,
                       timings: dict[str, float], progress: bool) -> None:
    """Mark near-duplicates among the accepted candidates (reason "duplicate")."""
    ok = [i for i, c in enumerate(cands) if c.reason is None]
    samples = [cands[i].sample for i in ok]
    t = time.perf_counter()
    stats = cache.build(samples, progress=progress)
    timings["embed"] = time.perf_counter() - t
    timings["embed_new_slices"] = float(stats.built + stats.rebuilt)
    t = time.perf_counter()
    vectors = sample_vectors(cache, samples, progress)
    timings["vectors"] = time.perf_counter() - t
    t = time.perf_counter()
    dup_of = near_duplicates(vectors, [s.class_name for s in samples],
                             [cands[i].quality for i in ok], config.dup_threshold,
                             seed=config.seed, mask_dims=MASK_DIMS,
                             mask_threshold=config.mask_threshold)
    for j, d in enumerate(dup_of.tolist()):
        if d >= 0:
            cands[ok[j]].reason = "duplicate"
            cands[ok[j]].duplicate_of = ok[d]
    timings["dedup"] = time.perf_counter() - t

