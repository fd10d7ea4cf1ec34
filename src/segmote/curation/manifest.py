"""The curation manifest: which (slice, class) samples to train on, and what was rejected why.

    {"format": "segmote-curation-manifest", "version": 1,
     "config": {...}, "thresholds": {...}, "summary": {...},
     "datasets": {NAME: {"root", "modality", "labels": {"1": "liver"}, "is_3d",
                         "instance_labels", "patient_of_case"}},
     "selected": [{"dataset", "case", "image", "label", "class", "value", "modality",
                   "slice", "axis", "scores": {...}}, ...],
     "rejected": [{... same keys ..., "reason", "duplicate_of": {"image", "slice", "class"}}]}

"slice" and "axis" are given for volumes only; a rejected entry with "slice": null is a whole case
(an "empty" one: class "*", value 0, no foreground at all). Paths are absolute when written; relative paths are
read relative to the manifest's folder. `manifest_samples` turns a manifest back into the
`DatasetInfo` / `SliceSample` objects `segmote train` uses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from segmote.curation.candidates import Candidate
from segmote.curation.pipeline import CurationResult
from segmote.curation.scores import QualityThresholds
from segmote.data.datasets import Case, DatasetInfo, SliceSample
from segmote.data.files import image_shape
from segmote.errors import InputError, ParameterError
from segmote.atomic import atomic_write_text

FORMAT = "segmote-curation-manifest"
VERSION = 1


# ------------------------------------------------------------------ writing

def _entry(c: Candidate | SliceSample, is_3d: bool) -> dict[str, Any]:
    s = c.sample if isinstance(c, Candidate) else c
    e: dict[str, Any] = {"dataset": s.dataset, "case": s.case_id,
                         "image": str(Path(s.image).resolve()),
                         "label": str(Path(s.label).resolve()), "class": s.class_name,
                         "value": s.class_value, "modality": s.modality}
    if is_3d:
        e["slice"], e["axis"] = s.slice_index, s.axis
    return e


def manifest_dict(result: CurationResult) -> dict[str, Any]:
    """The manifest of a curation result (JSON-ready)."""
    is_3d = {d.name: d.is_3d for d in result.datasets}
    cands = result.candidates
    selected = [{**_entry(cands[i], is_3d[cands[i].sample.dataset]),
                 "scores": cands[i].scores} for i in result.selected]
    rejected = []
    for i in result.rejected():
        c = cands[i]
        e = {**_entry(c, is_3d[c.sample.dataset]), "reason": c.reason, "scores": c.scores}
        if c.duplicate_of is not None:
            kept = cands[c.duplicate_of].sample
            e["duplicate_of"] = {"image": str(Path(kept.image).resolve()),
                                 "slice": kept.slice_index, "class": kept.class_name}
        rejected.append(e)
    return {"format": FORMAT, "version": VERSION,
            "config": dataclasses.asdict(result.config),
            "thresholds": QualityThresholds.from_dict(result.config.thresholds,
                                                      "thresholds").to_dict(),
            "summary": result.summary(), "datasets": _datasets(result.datasets),
            "selected": selected, "rejected": rejected}


def _datasets(datasets: list[DatasetInfo]) -> dict[str, Any]:
    return {d.name: {"root": str(Path(d.root).resolve()), "modality": d.modality,
                     "labels": {str(k): v for k, v in sorted(d.labels.items())},
                     "is_3d": d.is_3d,
                     "instance_labels": bool(getattr(d, "instance_labels", False)),
                     "patient_of_case": dict(d.patient_of_case)}
            for d in datasets}


def selection_manifest(datasets: list[DatasetInfo], samples: list[SliceSample],
                       path: str | Path) -> Path:
    """Write a manifest that selects exactly `samples` (of `datasets`), in their order, with no
    curation behind it: how a hand-made or benchmark subset trains through `segmote train
    --manifest` / `segmote.training.trainer.fit` like a curated one. Returns the path."""
    is_3d = {d.name: d.is_3d for d in datasets}
    unknown = sorted({s.dataset for s in samples} - set(is_3d))
    if unknown:
        raise ParameterError("samples", f"{{samples}}: dataset(s) {', '.join(unknown)} not in "
                             "{datasets}")
    data = {"format": FORMAT, "version": VERSION, "datasets": _datasets(datasets),
            "selected": [{**_entry(s, is_3d[s.dataset]), "scores": {"pixels": s.foreground}}
                         for s in samples], "rejected": []}
    atomic_write_text(Path(path), json.dumps(data, indent=1) + "\n")
    return Path(path)


def write_manifest(result: CurationResult, path: str | Path) -> dict[str, Any]:
    """Write the manifest atomically (temporary file + rename); returns what was written."""
    data = manifest_dict(result)
    atomic_write_text(Path(path), json.dumps(data, indent=1) + "\n")
    return data


# ------------------------------------------------------------------ reading

def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest as a dict, its top level checked; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a JSON manifest ({err.__class__.__name__}: "
                         f"{str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not a segmote curation manifest (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise InputError(f"{path}: manifest version {data.get('version')!r} is not supported "
                         f"(this segmote reads version {VERSION})")
    for key in ("datasets", "selected", "rejected"):
        kind = dict if key == "datasets" else list
        if not isinstance(data.get(key), kind):
            raise InputError(f"{path}: {key!r} must be a {'mapping' if kind is dict else 'list'}")
    return data


def _dataset(path: Path, name: str, raw: Any) -> DatasetInfo:
    where = f"{path}: dataset {name!r}"
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict) \
            or not isinstance(raw.get("is_3d"), bool):
        raise InputError(f"{where} needs 'labels' (value -> class) and 'is_3d'")
    try:
        labels = {int(k): str(v) for k, v in raw["labels"].items()}
    except ValueError:
        raise InputError(f"{where}: label values must be integers") from None
    kw: dict[str, Any] = {}
    if "instance_labels" in {f.name for f in dataclasses.fields(DatasetInfo)}:
        kw["instance_labels"] = bool(raw.get("instance_labels", False))
    patients = raw.get("patient_of_case") or {}
    if not isinstance(patients, dict):
        raise InputError(f"{where}: 'patient_of_case' must be a mapping")
    return DatasetInfo(name, _path(path, raw.get("root", "."), where), raw.get("modality"),
                       labels, [], raw["is_3d"], {str(k): str(v) for k, v in patients.items()},
                       **kw)


def _path(manifest: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a path, got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else (manifest.parent / p)


def _sample(path: Path, n: int, e: Any, datasets: dict[str, DatasetInfo],
            shapes: dict[Path, tuple[int, ...]]) -> SliceSample:
    where = f"{path}: selected entry {n}"
    if not isinstance(e, dict):
        raise InputError(f"{where} is not a mapping")
    missing = [k for k in ("dataset", "case", "image", "label", "class", "value") if k not in e]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}")
    d = datasets.get(e["dataset"])
    if d is None:
        raise InputError(f"{where}: dataset {e['dataset']!r} is not in 'datasets'")
    image, label = _path(path, e["image"], where), _path(path, e["label"], where)
    for f in (image, label):
        if not f.is_file():
            raise InputError(f"{where}: file {f} not found")
    value = e["value"]
    instance = bool(getattr(d, "instance_labels", False))
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or \
            (not instance and value not in d.labels):
        raise InputError(f"{where}: value {value!r} is not a class of dataset {d.name!r}")
    slice_index, axis = None, 2
    if d.is_3d:
        slice_index, axis = e.get("slice"), e.get("axis")
        if axis not in (0, 1, 2) or isinstance(slice_index, bool) \
                or not isinstance(slice_index, int) or slice_index < 0:
            raise InputError(f"{where}: a volume sample needs 'slice' >= 0 and 'axis' 0, 1 or 2")
        if label not in shapes:
            shapes[label] = image_shape(label)[0]
        if slice_index >= shapes[label][axis]:
            raise InputError(f"{where}: slice {slice_index} is outside {label.name} "
                             f"({shapes[label][axis]} slices along axis {axis})")
    elif e.get("slice") is not None:
        raise InputError(f"{where}: dataset {d.name!r} is 2-D; 'slice' must be absent")
    pixels = (e.get("scores") or {}).get("pixels", 0)
    return SliceSample(d.name, str(e["case"]), image, label, slice_index, axis, value,
                       str(e["class"]), d.modality, int(pixels) if isinstance(pixels, int) else 0,
                       instance=d.instance_labels)


def manifest_samples(path: str | Path) -> tuple[list[DatasetInfo], list[SliceSample]]:
    """The datasets and exactly the selected samples of a manifest, for `segmote train`.

    Each DatasetInfo lists only the cases that have a selected sample. InputError (one line
    naming the manifest and the entry) for a malformed manifest, a missing file, an unknown
    dataset or class, a slice outside its volume, or an entry listed twice.
    """
    path = Path(path)
    data = read_manifest(path)
    datasets = {name: _dataset(path, name, raw) for name, raw in data["datasets"].items()}
    if not data["selected"]:
        raise InputError(f"{path}: the manifest selects no sample")
    samples: list[SliceSample] = []
    seen: dict[tuple, int] = {}
    shapes: dict[Path, tuple[int, ...]] = {}
    cases: dict[tuple[str, str], Case] = {}
    for n, e in enumerate(data["selected"]):
        s = _sample(path, n, e, datasets, shapes)
        key = (s.dataset, str(s.image), str(s.label), s.slice_index, s.axis, s.class_value)
        if key in seen:
            raise InputError(f"{path}: selected entry {n} repeats entry {seen[key]}")
        seen[key] = n
        samples.append(s)
        case = cases.setdefault((s.dataset, s.case_id), Case(s.dataset, s.case_id, s.image,
                                                              s.label))
        if (case.image, case.label) != (s.image, s.label):
            raise InputError(f"{path}: selected entry {n} gives case {s.case_id!r} other files "
                             f"than an earlier entry ({case.image})")
    for case in cases.values():
        datasets[case.dataset].cases.append(case)
    used = [d for d in datasets.values() if d.cases]
    return used, samples
