"""The summary of `segmote evaluate`: per-class statistics, the overall mean, the rules that
produced them, and the notes a reader needs (unscored labels, absent classes, units)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmote.evaluation.metrics import EMPTY_BOTH, EMPTY_GT, EMPTY_NONE, EMPTY_PRED

METRICS = ("dice", "nsd", "hd95")

HD95_CAP_RULE = (
    "hd95 is inf in the CSV when exactly one mask is empty; summaries replace it by the diagonal "
    "of that case's image extent, sqrt(sum((shape_i * spacing_i)^2)) mm"
)
EMPTY_RULE = (
    "every case has a row for every class; both masks empty: dice 1, nsd 1, hd95 0 (empty=both); "
    "one empty: dice 0, nsd 0, hd95 inf (empty=pred or empty=gt); all rows enter the statistics"
)


@dataclass
class Summary:
    """Outcome of :func:`evaluate_folders`.

    ``classes`` maps class name -> ``{"class_id", "n", "empty": {flag: count},
    "dice"|"nsd"|"hd95": {"mean", "std", "median"}}``; ``overall`` holds the mean of each metric
    over all case-class rows (hd95 capped, see ``HD95_CAP_RULE``).
    """

    n_cases: int
    nsd_mm: float
    classes: dict[str, dict]
    overall: dict[str, float]
    missing: list[str] = field(default_factory=list)
    ignored_pred_labels: list[int] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)
    # labels found in the files but not named in the labels mapping (not scored)
    unlisted_labels: dict[str, list[int]] = field(default_factory=dict)
    # named classes absent from prediction and ground truth of every case
    absent_classes: list[str] = field(default_factory=list)
    empty_as_one: bool = False
    unit: str = "mm"  # "px" when the files carry no voxel spacing (PNG, TIFF, NPY)
    csv_path: Path | None = None
    json_path: Path | None = None

    def to_dict(self) -> dict:
        """The JSON summary, with the rules that produced the numbers spelled out."""
        return {
            "n_cases": self.n_cases,
            "nsd_tolerance_mm": self.nsd_mm,
            "distance_unit": self.unit,
            "surface": "voxels removed by one face-connected binary erosion (as MONAI/medpy)",
            "hd95_definition": "max(p95(d_pred_to_gt), p95(d_gt_to_pred)) in mm (as MONAI)",
            "hd95_cap": HD95_CAP_RULE,
            "empty_rule": EMPTY_RULE,
            "std": "population standard deviation (ddof=0) over cases",
            "missing_predictions_counted_as_empty": self.missing,
            "pred_labels_not_in_gt_ignored": self.ignored_pred_labels,
            "predictions_without_gt_ignored": self.unmatched_predictions,
            "labels_in_files_not_in_labels_json": self.unlisted_labels,
            "classes_absent_from_every_case": self.absent_classes,
            "absent_classes_in_mean": ABSENT_RULE[self.empty_as_one],
            "classes": self.classes,
            "overall_mean": self.overall,
            "csv": str(self.csv_path) if self.csv_path else None,
        }

    def format_table(self) -> str:
        """Compact text table: one line per class, mean ± std, then the overall mean."""
        width = max([len(name) for name in self.classes] + [7])
        nsd_head = f"nsd@{self.nsd_mm:g}{self.unit}"
        hd_head = f"hd95 {self.unit}"
        lines = [f"{'class':<{width}}  {'n':>4}  {'dice':>13}  {nsd_head:>13}  {hd_head:>15}"]
        for name, stats in self.classes.items():
            cells = [f"{stats[m]['mean']:.3f}±{stats[m]['std']:.3f}" for m in ("dice", "nsd")]
            hd = f"{stats['hd95']['mean']:.2f}±{stats['hd95']['std']:.2f}"
            lines.append(f"{name:<{width}}  {stats['n']:>4}  {cells[0]:>13}  {cells[1]:>13}  {hd:>15}")
        o = self.overall
        lines.append(
            f"{'overall':<{width}}  {'':>4}  {o['dice']:>13.3f}  {o['nsd']:>13.3f}  {o['hd95']:>15.2f}"
        )
        return "\n".join(lines)

    def notes(self) -> list[str]:
        """What the user must know to read the numbers: unscored or absent labels, units."""
        out = []
        for side, values in self.unlisted_labels.items():
            out.append(f"labels {values} in the {side} files are not in the labels JSON and "
                       "were not scored")
        if self.absent_classes:
            out.append(f"{len(self.absent_classes)} class(es) absent from prediction and ground "
                       f"truth of every case ({', '.join(self.absent_classes)}): "
                       + ABSENT_RULE[self.empty_as_one])
        if self.unit == "px":
            out.append("the files carry no voxel spacing: distances are in pixels, not mm")
        return out


ABSENT_RULE = {
    False: "reported apart, kept out of the per-class table and the overall mean",
    True: "scored dice 1, nsd 1, hd95 0 and counted in the overall mean (empty_as_one)",
}


def summarize(
    rows: list[dict], caps: list[float], labels: Mapping[int, str], nsd_mm: float
) -> Summary:
    """Per-class mean/std/median of each metric (hd95 capped per case) and the overall mean."""
    capped = [dict(row, hd95=min(row["hd95"], cap)) for row, cap in zip(rows, caps)]
    classes = {}
    for class_id, name in labels.items():
        mine = [r for r in capped if r["class_id"] == class_id]
        flags = [r["empty"] for r in mine]
        classes[name] = {
            "class_id": int(class_id),
            "n": len(mine),
            "empty": {f: flags.count(f) for f in (EMPTY_NONE, EMPTY_BOTH, EMPTY_PRED, EMPTY_GT)},
            **{m: _stats([r[m] for r in mine]) for m in METRICS},
        }
    overall = {m: _stats([r[m] for r in capped])["mean"] for m in METRICS}
    n_cases = len({r["case"] for r in rows})
    return Summary(n_cases=n_cases, nsd_mm=float(nsd_mm), classes=classes, overall=overall)


def _stats(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan")}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v))}
