"""Evaluate a folder of predicted label maps against a folder of ground-truth label maps.

Files are paired by case name (``CASE.nii.gz``, ``CASE_seg.nrrd`` and ``CASE.png`` all name case
``CASE``), read with :func:`segmote.io.read_image`, checked for identical geometry and scored per
class with :func:`segmote.evaluation.metrics.case_metrics`. Results go to a per-case-and-class CSV
and a ``<stem>.summary.json`` beside it, both written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from segmote.atomic import atomic_write_text
from segmote.errors import InputError, ParameterError
from segmote.evaluation.metrics import EMPTY_BOTH, EMPTY_GT, EMPTY_NONE, EMPTY_PRED
from segmote.evaluation.metrics import case_metrics, image_diagonal_mm

# Longest first, so "x.seg.nrrd" loses ".seg.nrrd" and not only ".nrrd".
LABEL_EXTENSIONS = (
    ".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd",
    ".png", ".tif", ".tiff", ".bmp", ".npy", ".npz",
)
CSV_COLUMNS = (
    "case", "class_id", "class", "dice", "nsd", "hd95", "empty", "n_gt_voxels", "n_pred_voxels",
)
METRICS = ("dice", "nsd", "hd95")
GEOMETRY_TOL = 1e-3  # mm (spacing, origin, affine) and unitless (direction cosines)

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
    csv_path: Path | None = None
    json_path: Path | None = None

    def to_dict(self) -> dict:
        """The JSON summary, with the rules that produced the numbers spelled out."""
        return {
            "n_cases": self.n_cases,
            "nsd_tolerance_mm": self.nsd_mm,
            "surface": "voxels removed by one face-connected binary erosion (as MONAI/medpy)",
            "hd95_definition": "max(p95(d_pred_to_gt), p95(d_gt_to_pred)) in mm (as MONAI)",
            "hd95_cap": HD95_CAP_RULE,
            "empty_rule": EMPTY_RULE,
            "std": "population standard deviation (ddof=0) over cases",
            "missing_predictions_counted_as_empty": self.missing,
            "pred_labels_not_in_gt_ignored": self.ignored_pred_labels,
            "predictions_without_gt_ignored": self.unmatched_predictions,
            "classes": self.classes,
            "overall_mean": self.overall,
            "csv": str(self.csv_path) if self.csv_path else None,
        }

    def format_table(self) -> str:
        """Compact text table: one line per class, mean ± std, then the overall mean."""
        width = max([len(name) for name in self.classes] + [7])
        nsd_head = f"nsd@{self.nsd_mm:g}mm"
        lines = [f"{'class':<{width}}  {'n':>4}  {'dice':>13}  {nsd_head:>13}  {'hd95 mm':>15}"]
        for name, stats in self.classes.items():
            cells = [f"{stats[m]['mean']:.3f}±{stats[m]['std']:.3f}" for m in ("dice", "nsd")]
            hd = f"{stats['hd95']['mean']:.2f}±{stats['hd95']['std']:.2f}"
            lines.append(f"{name:<{width}}  {stats['n']:>4}  {cells[0]:>13}  {cells[1]:>13}  {hd:>15}")
        o = self.overall
        lines.append(
            f"{'overall':<{width}}  {'':>4}  {o['dice']:>13.3f}  {o['nsd']:>13.3f}  {o['hd95']:>15.2f}"
        )
        return "\n".join(lines)


def evaluate_folders(
    pred_dir: Path,
    gt_dir: Path,
    labels: Mapping[int, str] | None = None,
    nsd_mm: float = 2.0,
    out_csv: Path = Path("results.csv"),
    allow_missing: bool = False,
    progress: bool = False,
) -> Summary:
    """Score every ground-truth case against its prediction; write the CSV and JSON summary.

    Args:
        pred_dir, gt_dir: folders of label maps, paired by case name.
        labels: class id -> name to score; None = every non-zero value found in the gt files.
        nsd_mm: NSD tolerance in mm.
        out_csv: per-case-and-class CSV; the summary goes to ``<stem>.summary.json`` beside it.
        allow_missing: count a gt case without prediction as an empty prediction instead of
            raising.
        progress: show a progress bar on stderr.

    Raises:
        InputError: missing folder or predictions, unreadable file, or pred/gt geometry mismatch.
    """
    pred_dir, gt_dir, out_csv = Path(pred_dir), Path(gt_dir), Path(out_csv)
    if not (np.isfinite(nsd_mm) and nsd_mm >= 0):
        raise ParameterError("nsd_mm", f"{{nsd_mm}} must be a non-negative number of mm, got "
                             f"{nsd_mm}")
    gt_files = index_folder(gt_dir)
    if not gt_files:
        raise InputError(f"{gt_dir}: no label files ({', '.join(LABEL_EXTENSIONS)})")
    pred_files = index_folder(pred_dir)
    missing = sorted(set(gt_files) - set(pred_files))
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ParameterError(
            "allow_missing",
            f"{pred_dir}: no prediction for {len(missing)} of {len(gt_files)} ground-truth cases "
            f"({shown}); pass {{allow_missing}} to count them as empty predictions")
    rows, caps, gt_labels, pred_labels = _score_cases(gt_files, pred_files, labels, nsd_mm, progress)
    ignored: list[int] = []
    if labels is None:
        if not gt_labels:
            raise ParameterError("labels", f"{gt_dir}: no foreground label in any file; pass "
                                 "{labels} dataset.json")
        labels = {k: str(k) for k in sorted(gt_labels)}
        ignored = sorted(pred_labels - gt_labels)
        rows, caps = _complete_rows(rows, caps, labels, list(gt_files))
    summary = summarize(rows, caps, labels, nsd_mm)
    summary.missing, summary.ignored_pred_labels = missing, ignored
    summary.unmatched_predictions = sorted(set(pred_files) - set(gt_files))
    summary.csv_path, summary.json_path = out_csv, summary_path(out_csv)
    _write_outputs(rows, summary)
    return summary


def case_name(path: Path) -> str | None:
    """Case name of a label file (extension and a trailing ``_seg`` stripped), or None."""
    name = path.name
    for ext in LABEL_EXTENSIONS:
        if name.lower().endswith(ext):
            stem = name[: -len(ext)]
            return stem[: -len("_seg")] if stem.endswith("_seg") and len(stem) > 4 else stem
    return None


def index_folder(folder: Path) -> dict[str, Path]:
    """Case name -> file for every label file directly in ``folder`` (other files are ignored)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path)
        if name is None or path.name.startswith(".") or not path.is_file():
            continue
        if name in cases:
            raise InputError(f"{folder}: two files for case {name!r}: {cases[name].name}, {path.name}")
        cases[name] = path
    return cases


def load_labels(path: Path) -> dict[int, str]:
    """Class id -> name from a dataset.json (nnU-Net v2 name->int or MSD "int"->name)."""
    try:
        raw = json.loads(Path(path).read_text())["labels"]
        if not isinstance(raw, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = "not found" if isinstance(err, FileNotFoundError) else "no 'labels' mapping"
        raise InputError(f"{path}: {reason} (expected a dataset.json with 'labels')") from None
    if raw and all(str(k).lstrip("-").isdigit() for k in raw):  # MSD: {"0": "background", ...}
        pairs = [(int(k), str(v)) for k, v in raw.items()]
    else:  # nnU-Net v2: {"background": 0, "liver": 1}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
            raise InputError(f"{path}: region-based or non-integer labels are not supported")
        pairs = [(int(v), str(k)) for k, v in raw.items()]
    labels = {k: name for k, name in sorted(pairs) if k > 0}
    if not labels:
        raise InputError(f"{path}: 'labels' has no class with id > 0")
    return labels


def summary_path(out_csv: Path) -> Path:
    """``results.csv`` -> ``results.summary.json``."""
    return out_csv.with_name(out_csv.stem + ".summary.json")


def _score_cases(
    gt_files: dict[str, Path],
    pred_files: dict[str, Path],
    labels: Mapping[int, str] | None,
    nsd_mm: float,
    progress: bool,
) -> tuple[list[dict], list[float], set[int], set[int]]:
    """Rows for every case (and, if ``labels`` is None, every label present in it)."""
    from tqdm import tqdm  # only needed here; keeps `import segmote.evaluation` light

    rows, caps, gt_seen, pred_seen = [], [], set(), set()
    for case, gt_path in tqdm(gt_files.items(), desc="evaluate", unit="case", disable=not progress):
        gt = _read_label(gt_path)
        pred_path = pred_files.get(case)
        if pred_path is None:  # only reached with allow_missing
            pred_array = np.zeros_like(gt.array)
        else:
            pred = _read_label(pred_path)
            check_same_geometry(pred, gt)
            pred_array = pred.array
        case_labels = labels
        if case_labels is None:
            gt_present, pred_present = _present_labels(gt.array), _present_labels(pred_array)
            gt_seen |= gt_present
            pred_seen |= pred_present
            case_labels = {k: str(k) for k in sorted(gt_present | pred_present)}
        cap = image_diagonal_mm(gt.array.shape, gt.spacing)
        for row in case_metrics(pred_array, gt.array, case_labels, gt.spacing, nsd_mm):
            rows.append({"case": case, **row})
            caps.append(cap)
    return rows, caps, gt_seen, pred_seen


class LabelImage(NamedTuple):
    """A label map as read for evaluation: integer ``array`` plus the reader's geometry."""

    array: np.ndarray
    spacing: tuple[float, ...]
    meta: dict
    path: Path


def _read_label(path: Path) -> LabelImage:
    """Read a label map with the project reader; integer array of 2 or 3 dims."""
    from segmote.io import read_image  # the reader pulls SimpleITK/pydicom; import when used

    try:
        image = read_image(path)
    except (OSError, ValueError) as err:  # the reader raises InputError itself where it can
        raise InputError(f"{path}: cannot read label map ({err})".replace("\n", " ")) from None
    array = np.asarray(image.array)
    if array.ndim not in (2, 3) or len(image.spacing) != array.ndim:
        raise InputError(f"{path}: not a single-channel 2-D or 3-D label map (shape {array.shape})")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif not np.issubdtype(array.dtype, np.integer):
        # Label maps are often stored as float NIfTI; accept them only if they hold integers.
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.rint(array)):
            raise InputError(f"{path}: not a label map (non-integer values)")
        array = array.astype(np.int32)
    if not all(np.isfinite(s) and s > 0 for s in image.spacing):
        raise InputError(f"{path}: invalid voxel spacing {tuple(image.spacing)}")
    return LabelImage(array, tuple(float(s) for s in image.spacing), dict(image.meta or {}), Path(path))


def check_same_geometry(pred: LabelImage, gt: LabelImage) -> None:
    """Raise InputError if two images differ in shape, spacing or orientation (tol 1e-3)."""
    problem = None
    if pred.array.shape != gt.array.shape:
        problem = f"shape {pred.array.shape} vs {gt.array.shape}"
    elif not _close(pred.spacing, gt.spacing):
        problem = f"spacing {_fmt(pred.spacing)} vs {_fmt(gt.spacing)}"
    else:
        for key in ("affine", "origin", "direction"):
            a, b = pred.meta.get(key), gt.meta.get(key)
            if a is not None and b is not None and not _close(a, b):
                diff = np.max(np.abs(np.asarray(a, float) - np.asarray(b, float)))
                problem = f"{key} differs by up to {diff:.4g} (tolerance {GEOMETRY_TOL:g})"
                break
    if problem:
        raise InputError(f"prediction {pred.path} and ground truth {gt.path} differ in {problem}")


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


def _complete_rows(
    rows: list[dict], caps: list[float], labels: Mapping[int, str], cases: list[str]
) -> tuple[list[dict], list[float]]:
    """Keep rows of ``labels`` only and add both-empty rows for classes absent from a case."""
    by_key = {(r["case"], r["class_id"]): (r, c) for r, c in zip(rows, caps)}
    case_cap = {r["case"]: c for r, c in zip(rows, caps)}
    out_rows, out_caps = [], []
    for case in cases:
        for class_id, name in labels.items():
            row, cap = by_key.get((case, class_id), (None, case_cap.get(case, 0.0)))
            if row is None:  # neither pred nor gt holds this class in this case
                row = {"case": case, "class_id": class_id, "dice": 1.0, "nsd": 1.0, "hd95": 0.0,
                       "empty": EMPTY_BOTH, "n_gt_voxels": 0, "n_pred_voxels": 0}
            out_rows.append({**row, "class": name})
            out_caps.append(cap)
    return out_rows, out_caps


def _write_outputs(rows: list[dict], summary: Summary) -> None:
    """Write the CSV, then the JSON summary, each via a temp file and ``os.replace``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text_json = json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n"
    atomic_write_text(summary.csv_path, buffer.getvalue(), newline="")
    atomic_write_text(summary.json_path, text_json, newline="")


def _present_labels(array: np.ndarray) -> set[int]:
    """Positive label values present in an integer ``array``."""
    top = int(array.max(initial=0))
    if top > 65535:  # find_objects would allocate one entry per value up to the maximum
        return {int(v) for v in np.unique(array) if v > 0}
    # One pass, no sort: much faster than np.unique on a 10-million-voxel volume.
    return {i + 1 for i, box in enumerate(ndimage.find_objects(array, max_label=top)) if box}


def _stats(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan")}
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v))}


def _close(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=GEOMETRY_TOL))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"
