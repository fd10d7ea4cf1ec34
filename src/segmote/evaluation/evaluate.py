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
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from segmote.errors import InputError, ParameterError
from segmote.evaluation.metrics import EMPTY_BOTH
from segmote.evaluation.metrics import case_metrics, image_diagonal_mm
from segmote.evaluation.summary import Summary, summarize
from segmote.outputs import check_outputs, written_together

# Longest first, so "x.seg.nrrd" loses ".seg.nrrd" and not only ".nrrd".
LABEL_EXTENSIONS = (
    ".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd",
    ".png", ".tif", ".tiff", ".bmp", ".npy", ".npz",
)
CSV_COLUMNS = (
    "case", "class_id", "class", "dice", "nsd", "hd95", "empty", "n_gt_voxels", "n_pred_voxels",
)
GEOMETRY_TOL = 1e-3  # mm (spacing, origin, affine) and unitless (direction cosines)

def evaluate_folders(
    pred_dir: Path,
    gt_dir: Path,
    labels: Mapping[int, str] | None = None,
    nsd_mm: float = 2.0,
    out_csv: Path = Path("results.csv"),
    allow_missing: bool = False,
    progress: bool = False,
    labels_file: Path | None = None,
    empty_as_one: bool = False,
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
        labels_file: the JSON ``labels`` came from; only checked not to be overwritten.
        empty_as_one: score a named class absent from prediction and ground truth of every
            case as 1 in the overall mean (default: reported apart, see ``ABSENT_RULE``).

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
    check_outputs({"results CSV": out_csv, "summary JSON": summary_path(out_csv)},
                  {"predictions folder": [pred_dir], "prediction": list(pred_files.values()),
                   "ground-truth folder": [gt_dir], "ground truth": list(gt_files.values()),
                   "labels JSON": [labels_file] if labels_file else []},
                  endings={"results CSV": (".csv",)})
    missing = sorted(set(gt_files) - set(pred_files))
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ParameterError(
            "allow_missing",
            f"{pred_dir}: no prediction for {len(missing)} of {len(gt_files)} ground-truth cases "
            f"({shown}); pass {{allow_missing}} to count them as empty predictions")
    rows, caps, gt_labels, pred_labels, unit = _score_cases(gt_files, pred_files, labels, nsd_mm,
                                                            progress)
    ignored: list[int] = []
    unlisted: dict[str, list[int]] = {}
    absent: list[str] = []
    if labels is not None:
        unlisted = {side: sorted(found - set(labels)) for side, found in
                    (("ground-truth", gt_labels), ("prediction", pred_labels))
                    if found - set(labels)}
        absent = [name for cid, name in labels.items() if cid not in gt_labels | pred_labels]
    if absent and not empty_as_one:
        rows, caps = _without_classes(rows, caps, absent)
        labels = {cid: name for cid, name in labels.items() if name not in absent}
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
    summary.unlisted_labels, summary.absent_classes = unlisted, absent
    summary.empty_as_one, summary.unit = empty_as_one, unit
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
) -> tuple[list[dict], list[float], set[int], set[int], str]:
    """Rows for every case (and, if ``labels`` is None, every label present in it), the labels
    seen in the gt and pred files, and the distance unit ("mm", or "px" without spacing)."""
    from tqdm import tqdm  # only needed here; keeps `import segmote.evaluation` light

    rows, caps, gt_seen, pred_seen, units = [], [], set(), set(), set()
    for case, gt_path in tqdm(gt_files.items(), desc="evaluate", unit="case", disable=not progress):
        gt = _read_label(gt_path)
        pred_path = pred_files.get(case)
        if pred_path is None:  # only reached with allow_missing
            pred_array = np.zeros_like(gt.array)
        else:
            pred = _read_label(pred_path)
            check_same_geometry(pred, gt)
            pred_array = pred.array
        units.add(gt.unit)
        gt_present, pred_present = _present_labels(gt.array), _present_labels(pred_array)
        gt_seen |= gt_present
        pred_seen |= pred_present
        case_labels = labels
        if case_labels is None:
            case_labels = {k: str(k) for k in sorted(gt_present | pred_present)}
        cap = image_diagonal_mm(gt.array.shape, gt.spacing)
        for row in case_metrics(pred_array, gt.array, case_labels, gt.spacing, nsd_mm):
            rows.append({"case": case, **row})
            caps.append(cap)
    if len(units) > 1:
        raise InputError(f"{next(iter(gt_files.values())).parent}: some label maps carry a voxel "
                         "spacing in mm and some do not (pixels); distances would mix units")
    return rows, caps, gt_seen, pred_seen, units.pop() if units else "mm"


class LabelImage(NamedTuple):
    """A label map as read for evaluation: integer ``array`` plus the reader's geometry."""

    array: np.ndarray
    spacing: tuple[float, ...]
    meta: dict
    path: Path
    unit: str = "mm"


# formats whose files carry no voxel spacing (read with unit spacing): distances are in pixels
PIXEL_FORMATS = ("png", "jpg", "bmp", "tiff", "npy")


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
    unit = "px" if image.format in PIXEL_FORMATS or (image.format == "npz" and not
                                                      image.meta.get("spacing_given")) else "mm"
    return LabelImage(array, tuple(float(s) for s in image.spacing), dict(image.meta or {}),
                      Path(path), unit)


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


def _without_classes(rows: list[dict], caps: list[float], names: list[str],
                     ) -> tuple[list[dict], list[float]]:
    """The rows (and their hd95 caps) of every class but `names`."""
    kept = [(r, c) for r, c in zip(rows, caps) if r.get("class") not in names]
    return [r for r, _ in kept], [c for _, c in kept]


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
    """Write the CSV and the JSON summary together: both or neither (`written_together`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text_json = json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n"
    with written_together([summary.csv_path, summary.json_path]) as (tmp_csv, tmp_json):
        tmp_csv.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        tmp_json.write_text(text_json, encoding="utf-8", newline="")


def _present_labels(array: np.ndarray) -> set[int]:
    """Positive label values present in an integer ``array``."""
    top = int(array.max(initial=0))
    if top > 65535:  # find_objects would allocate one entry per value up to the maximum
        return {int(v) for v in np.unique(array) if v > 0}
    # One pass, no sort: much faster than np.unique on a 10-million-voxel volume.
    return {i + 1 for i, box in enumerate(ndimage.find_objects(array, max_label=top)) if box}


def _close(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=GEOMETRY_TOL))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"
