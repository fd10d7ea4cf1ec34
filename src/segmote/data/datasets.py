"""Users' training folders: find the cases, split them by patient, list the labelled slices.

Three layouts are read (one folder = one dataset):
- nnU-Net v2 raw: ``dataset.json`` (``channel_names``, ``labels`` {name: value}, ``file_ending``),
  ``imagesTr/CASE_0000{ending}`` (channel 0 is used) and ``labelsTr/CASE{ending}``;
- Medical Segmentation Decathlon (and nnU-Net v1): ``dataset.json`` with ``modality`` {"0": "CT"},
  ``labels`` {"1": "name"} and ``training`` [{"image": "./imagesTr/x.nii.gz", "label": ...}];
- 2-D: ``images/`` + ``labels/`` with matching stems (a ``_0000`` channel suffix on the image is
  allowed); an optional ``dataset.json`` gives labels / modality, else labels are the values
  present, named ``class_N``.

A ``patient_of_case`` mapping in ``dataset.json`` (as `segmote samples fetch` writes) groups cases
of one patient, so the split never puts one patient on both sides. Slices are cut exactly as
inference cuts them (`segmote.slicing.volume_slice`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segmote.atomic import atomic_write_text
from segmote.data.files import (channel0, channel_modality, image_shape, parse_labels, read_json,
                                read_label)
from segmote.errors import InputError
from segmote.slicing import volume_slice
from segmote.io.image import READ_FORMATS, split_ext

Split = dict[str, dict[str, Any]]  # dataset -> {"train": [case ids], "val": [...], "note": str}
_LABEL_ENDINGS = (".png", ".tif", ".tiff", ".bmp", ".npy", ".nii", ".nii.gz", ".nrrd", ".mha")


@dataclass(frozen=True)
class Case:
    """One image + label pair (one patient / subject, or one of their scans)."""

    dataset: str
    case_id: str
    image: Path
    label: Path


@dataclass
class DatasetInfo:
    """One discovered dataset folder.

    labels: label value -> class name, background (0) and nnU-Net's "ignore" label excluded.
    modality: canonical name of channel 0 (`segmote.intensity.MODALITIES`) or None if unknown.
    patient_of_case: case id -> patient id, where dataset.json says; other cases are their own
        patient.
    instance_labels: dataset.json's ``"instance_labels": true`` (a segmote extension): the label
        maps hold instance ids (1, 2, ... e.g. one per nucleus) of the one class `labels` names,
        and each instance is its own training sample.
    """

    name: str
    root: Path
    modality: str | None
    labels: dict[int, str]
    cases: list[Case]
    is_3d: bool
    patient_of_case: dict[str, str] = field(default_factory=dict)
    instance_labels: bool = False


@dataclass(frozen=True)
class SliceSample:
    """One (slice, class) training sample. slice_index is None for 2-D images, whose `axis`
    is carried along but unused."""

    dataset: str
    case_id: str
    image: Path
    label: Path
    slice_index: int | None
    axis: int
    class_value: int
    class_name: str
    modality: str | None
    foreground: int  # pixels of this class on this slice
    instance: bool = False  # class_value is one instance id of an instance-labelled dataset


def class_mask(plane: np.ndarray | Any, sample: SliceSample) -> Any:
    """Every pixel of the sample's class on its label plane (numpy array or torch tensor): the
    target of a text prompt, which names the class. For an instance sample (one nucleus) that is
    every instance of the dataset's one class (label > 0), not only the sample's own instance,
    and not only the instances that became samples (small ones are below min_foreground)."""
    return plane > 0 if sample.instance else plane == sample.class_value


@dataclass
class SampleList:
    """Samples of one split part and what was dropped, by reason (explicit counts)."""

    samples: list[SliceSample]
    skipped: dict[str, int]


# ------------------------------------------------------------------ layouts

def _nnunet_cases(root: Path, meta: dict, name: str) -> list[Case]:
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(f"{root / 'dataset.json'}: 'file_ending' (e.g. \".nii.gz\") is missing")
    images = root / "imagesTr"
    cases = []
    for f in sorted(images.iterdir()):
        if f.name.startswith(".") or not f.name.endswith("_0000" + ending):
            continue  # hidden files and channels > 0 (only channel 0 is used)
        case_id = f.name[: -len("_0000" + ending)]
        label = root / "labelsTr" / (case_id + ending)
        if not label.is_file():
            raise InputError(f"{f}: image has no label {label}")
        cases.append(Case(name, case_id, f, label))
    return cases


def _msd_cases(root: Path, meta: dict, name: str) -> list[Case]:
    entries = meta["training"]
    if not isinstance(entries, list):
        raise InputError(f"{root / 'dataset.json'}: 'training' must be a list")
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str)
                                                  for k in ("image", "label")):
            raise InputError(f"{root / 'dataset.json'}: each 'training' entry needs 'image' "
                             f"and 'label', got {str(entry)[:80]}")
        image, label = root / entry["image"], root / entry["label"]
        if not image.is_file():
            raise InputError(f"{root / 'dataset.json'}: listed image {image} not found")
        if not label.is_file():
            raise InputError(f"{image}: image has no label {label}")
        case_id = split_ext(image)[0]
        if any(c.case_id == case_id for c in cases):
            raise InputError(f"{root / 'dataset.json'}: case {case_id!r} is listed twice")
        cases.append(Case(name, case_id, image, label))
    return cases


def _folder_cases(root: Path, name: str) -> list[Case]:
    labels = {}
    for f in sorted((root / "labels").iterdir()):
        stem, ext = split_ext(f)
        if not f.name.startswith(".") and ext in _LABEL_ENDINGS:
            if stem in labels:
                raise InputError(f"{f}: a second label for case {stem!r} ({labels[stem].name})")
            labels[stem] = f
    cases, seen = [], set()
    for f in sorted((root / "images").iterdir()):
        stem, ext = split_ext(f)
        if f.name.startswith(".") or ext not in READ_FORMATS:
            continue
        case_id = stem if stem in labels else stem.removesuffix("_0000")
        if case_id not in labels and stem[-5:-4] == "_" and stem[-4:].isdigit() \
                and stem[:-5] in labels:
            continue  # an nnU-Net-style channel other than 0 (only channel 0 is used)
        if case_id not in labels:
            raise InputError(f"{f}: image has no label in {root / 'labels'} (same name stem)")
        if case_id in seen:
            raise InputError(f"{f}: a second image for case {case_id!r}")
        seen.add(case_id)
        cases.append(Case(name, case_id, f, labels[case_id]))
    return cases


def _values_present(cases: list[Case]) -> dict[int, str]:
    values: set[int] = set()
    for case in cases:
        values.update(int(v) for v in np.unique(read_label(case.label)))
    return {v: f"class_{v}" for v in sorted(values - {0})}


def discover_one(root: Path) -> DatasetInfo:
    """Read one dataset folder (any of the three layouts); InputError naming what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    json_path = root / "dataset.json"
    meta = read_json(json_path) if json_path.is_file() else None
    name = root.resolve().name
    if meta is not None and "training" in meta:
        cases, channel = _msd_cases(root, meta, name), channel0(meta.get("modality"))
    elif meta is not None and (root / "imagesTr").is_dir():
        cases, channel = _nnunet_cases(root, meta, name), channel0(meta.get("channel_names"))
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        cases = _folder_cases(root, name)
        channel = channel0((meta or {}).get("channel_names") or (meta or {}).get("modality"))
    else:
        raise InputError(f"{root}: unknown dataset layout; expected nnU-Net (dataset.json + "
                         "imagesTr/ + labelsTr/), MSD (dataset.json with 'training') or "
                         "images/ + labels/")
    if not cases:
        raise InputError(f"{root}: no cases found (no image with a matching label)")
    if meta is not None and "labels" in meta:
        labels = parse_labels(meta["labels"], json_path)
    else:
        labels = _values_present(cases)
        if not labels:
            raise InputError(f"{root}: the label maps hold no foreground value")
    is_3d = _check_shapes(cases)
    patients = (meta or {}).get("patient_of_case") or {}
    if not isinstance(patients, dict):
        raise InputError(f"{json_path}: 'patient_of_case' must map case ids to patient ids")
    instances = (meta or {}).get("instance_labels", False)
    if not isinstance(instances, bool):
        raise InputError(f"{json_path}: 'instance_labels' must be true or false")
    if instances and len(labels) != 1:
        raise InputError(f"{json_path}: 'instance_labels' needs exactly one class in 'labels' "
                         f"(the class every instance belongs to), got {len(labels)}")
    return DatasetInfo(name, root, channel_modality(channel), labels, cases, is_3d,
                       {str(k): str(v) for k, v in patients.items()}, instances)


def _check_shapes(cases: list[Case]) -> bool:
    """Every label has its image's grid; all cases are volumes or all are 2-D. Returns is_3d."""
    kinds = set()
    for case in cases:
        img_shape, img_vol = image_shape(case.image)
        lab_shape, lab_vol = image_shape(case.label)
        # a 2-D image may carry colour channels; its label is one (H, W) plane
        same = img_shape == lab_shape if img_vol else img_shape[:2] == lab_shape[:2]
        if img_vol != lab_vol or not same:
            raise InputError(f"{case.label}: label shape {lab_shape} differs from the image "
                             f"shape {img_shape} of {case.image.name}")
        kinds.add(img_vol)
    if len(kinds) > 1:
        raise InputError(f"{cases[0].image.parent}: mixes 2-D images and 3-D volumes; "
                         "put them in separate dataset folders")
    return kinds.pop()


def discover(paths: list[Path]) -> list[DatasetInfo]:
    """Read every dataset folder; names (folder names) must be unique."""
    if not paths:
        raise InputError("give at least one dataset folder")
    datasets = [discover_one(Path(p)) for p in paths]
    names = [d.name for d in datasets]
    for d in datasets:
        if names.count(d.name) > 1:
            raise InputError(f"{d.root}: another dataset folder is also named {d.name!r}; "
                             "dataset folder names must be unique")
    return datasets


# ------------------------------------------------------------------ split

def _rng(seed: int, dataset: str) -> np.random.Generator:
    # per-dataset stream: adding a dataset does not reshuffle the others
    digest = hashlib.sha256(dataset.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def make_split(datasets: list[DatasetInfo], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split each dataset by patient (cases of one patient stay together), never by slice.

    At least one patient per dataset goes to train, and at least one to val when val_fraction > 0
    and there are two or more; a dataset with a single patient goes entirely to train, and the
    split says so under "note" (and a warning is issued).
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split: Split = {}
    for d in datasets:
        patient = {c.case_id: d.patient_of_case.get(c.case_id, c.case_id) for c in d.cases}
        groups = sorted(set(patient.values()))
        order = [groups[i] for i in _rng(seed, d.name).permutation(len(groups))]
        n_val = 0
        if val_fraction > 0 and len(groups) > 1:
            n_val = min(max(1, round(val_fraction * len(groups))), len(groups) - 1)
        val_groups = set(order[:n_val])
        entry: dict[str, Any] = {
            "train": sorted(c for c, p in patient.items() if p not in val_groups),
            "val": sorted(c for c, p in patient.items() if p in val_groups)}
        if len(groups) == 1 and val_fraction > 0:
            entry["note"] = (f"only one patient ({groups[0]}): all {len(patient)} case(s) used "
                             "for training, none for validation")
            warnings.warn(f"{d.root}: {entry['note']}", stacklevel=2)
        split[d.name] = entry
    return split


def save_split(split: Split, path: Path) -> None:
    """Write the split as JSON (temporary file + rename: never half-written)."""
    atomic_write_text(path, json.dumps(split, indent=2, sort_keys=True) + "\n")


def load_split(path: Path) -> Split:
    """Read a split written by `save_split`; InputError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found")
    split = read_json(path)
    for name, entry in split.items():
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(part), list) and all(isinstance(c, str) for c in entry[part])
            for part in ("train", "val"))
        if not ok:
            raise InputError(f"{path}: dataset {name!r} needs 'train' and 'val' lists of case ids")
    return split


# ------------------------------------------------------------------ slices

def _bump(skipped: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        skipped[reason] = skipped.get(reason, 0) + n


def _planes(label: np.ndarray, is_3d: bool, axis: int):
    """(slice index or None, 2-D label plane as inference sees it) for every slice."""
    if not is_3d:
        yield None, label
        return
    for k in range(label.shape[axis]):
        yield k, volume_slice(label, k, axis)


def slice_samples(datasets: list[DatasetInfo], split: Split,
                  part: Literal["train", "val"] = "train", axis: int = 2,
                  min_foreground: int = 10) -> SampleList:
    """Every (slice, class) with at least `min_foreground` pixels of the class, from the cases
    of `part`; volumes are cut along `axis` with `volume_slice`, as inference does.

    skipped counts: "empty_slices" (no foreground class at all), "below_min_foreground" (one
    count per slice and class with 1..min_foreground-1 pixels), "degenerate_slices" (a side < 2
    pixels), "cases_not_in_split" (cases of the folder the split does not name),
    "undeclared_value_slices" (slices holding a label value dataset.json does not name; those
    pixels are no class, the slice's named classes are still used).
    Each label file is read once per call.
    """
    if part not in ("train", "val"):
        raise InputError(f"part must be 'train' or 'val', got {part!r}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    samples: list[SliceSample] = []
    skipped: dict[str, int] = {}
    for d in datasets:
        if d.name not in split:
            raise InputError(f"the split has no entry for dataset {d.name!r} ({d.root}); "
                             "make a new split")
        by_id = {c.case_id: c for c in d.cases}
        wanted = split[d.name].get(part, [])
        missing = [c for c in wanted if c not in by_id]
        if missing:
            raise InputError(f"the split names case {missing[0]!r}, not found in {d.root}")
        named = set(split[d.name].get("train", [])) | set(split[d.name].get("val", []))
        if part == "train":
            _bump(skipped, "cases_not_in_split", len(set(by_id) - named))
        values = np.array(sorted(d.labels), dtype=np.int64)
        for case_id in wanted:
            case = by_id[case_id]
            label = read_label(case.label)
            for k, plane in _planes(label, d.is_3d, axis):
                if min(plane.shape) < 2:
                    _bump(skipped, "degenerate_slices")
                    continue
                if d.instance_labels:
                    samples += _instance_samples(d, case, k, axis, plane, min_foreground,
                                                 skipped)
                    continue
                full = np.bincount(plane.ravel(), minlength=int(values.max()) + 1)
                counts = full[values]
                # values dataset.json does not name (e.g. nnU-Net's ignore label) are no class
                _bump(skipped, "undeclared_value_slices",
                      int(plane.size - full[0] - counts.sum() > 0))
                if not counts.any():
                    _bump(skipped, "empty_slices")
                    continue
                _bump(skipped, "below_min_foreground",
                      int(((counts > 0) & (counts < min_foreground)).sum()))
                for value, n in zip(values.tolist(), counts.tolist()):
                    if n >= min_foreground and n > 0:
                        samples.append(SliceSample(d.name, case_id, case.image, case.label, k,
                                                   axis, value, d.labels[value], d.modality, n))
    return SampleList(samples, skipped)


def _instance_samples(d: DatasetInfo, case: Case, k: int | None, axis: int, plane: np.ndarray,
                      min_foreground: int, skipped: dict[str, int]) -> list[SliceSample]:
    """One sample per instance id on the plane (instance-labelled datasets)."""
    ids, counts = np.unique(plane[plane > 0], return_counts=True)
    if not len(ids):
        _bump(skipped, "empty_slices")
        return []
    _bump(skipped, "below_min_foreground", int((counts < min_foreground).sum()))
    (name,) = d.labels.values()
    return [SliceSample(d.name, case.case_id, case.image, case.label, k, axis, int(i), name,
                        d.modality, int(n), instance=True)
            for i, n in zip(ids.tolist(), counts.tolist()) if n >= min_foreground]
