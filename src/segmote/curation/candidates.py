"""Every (plane, class) mask of the dataset folders, scored, with the rule it breaks (if any).

Unlike `segmote.data.datasets.slice_samples`, which silently drops empty and tiny masks, this
enumeration keeps them, so the curator can report them with a reason:
- a (slice, class) with at least one pixel is a candidate, scored by `scores`;
- a case (a volume or a 2-D image) whose label map holds no pixel of any class is one "empty"
  rejection (class "*", value 0, slice None). A case lacking some of the classes is normal (not
  every scan shows every organ or a tumour) and is not reported; nor is every empty slice of a
  volume, which would bury the report.
Planes are cut by `segmote.slicing.volume_slice`, as inference and training cut them.
Instance-labelled datasets (`DatasetInfo.instance_labels`) give one candidate per instance id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from segmote.curation.scores import (ImageScores, QualityThresholds, image_reason, image_scores,
                                     mask_reason, mask_scores, score_dict)
from segmote.data.datasets import Case, DatasetInfo, SliceSample
from segmote.data.files import read_label
from segmote.errors import InputError
from segmote.slicing import volume_slice
from segmote.io import read_image

EMPTY_CLASS = "*"  # the class of an "empty" rejection: the case has no foreground at all


@dataclass
class Candidate:
    """One scored (plane, class) sample. reason: the first rule broken (None: accepted so far);
    duplicate_of: index of the kept sample it duplicates (set by redundancy removal)."""

    sample: SliceSample
    scores: dict[str, float]
    reason: str | None
    duplicate_of: int | None = None

    @property
    def quality(self) -> float:
        return float(self.scores.get("quality", 0.0))


@dataclass
class CandidateSet:
    """All candidates, and how many planes were skipped as degenerate (a side < 2 pixels)."""

    candidates: list[Candidate] = field(default_factory=list)
    degenerate_planes: int = 0


def _planes(image: np.ndarray, label: np.ndarray, is_3d: bool, axis: int,
            ) -> Iterator[tuple[int | None, np.ndarray, np.ndarray]]:
    if not is_3d:
        yield None, image, label
        return
    if image.ndim != 3 or label.ndim != 3:
        raise InputError(f"expected 3-D image and label volumes, got shapes {image.shape} and "
                         f"{label.shape}")
    for k in range(label.shape[axis]):
        yield k, volume_slice(image, k, axis), volume_slice(label, k, axis)


def instances(d: DatasetInfo) -> bool:
    """Whether the label maps hold instance ids (`DatasetInfo.instance_labels`; False for
    versions of `DatasetInfo` without that field)."""
    return bool(getattr(d, "instance_labels", False))


def _plane_values(plane: np.ndarray, d: DatasetInfo) -> list[tuple[int, str]]:
    """(value, class name) of every class / instance present on the plane."""
    present = np.unique(plane)
    if instances(d):
        (name,) = d.labels.values()
        return [(int(v), name) for v in present.tolist() if v > 0]
    return [(int(v), d.labels[int(v)]) for v in present.tolist() if int(v) in d.labels]


def score_case(d: DatasetInfo, case: Case, axes: Sequence[int], thresholds: QualityThresholds,
               window: str | None, out: CandidateSet) -> None:
    """Append the candidates of one case to `out`: volumes cut along each of `axes` (2-D
    images have one plane); each file is read once."""
    image = np.asarray(read_image(case.image).array)
    label = read_label(case.label)
    seen: set[int] = set()
    planes = (((axis, *p) for axis in axes for p in _planes(image, label, True, axis))
              if d.is_3d else ((axes[0], *p) for p in _planes(image, label, False, axes[0])))
    for axis, k, img_plane, lab_plane in planes:
        if min(lab_plane.shape) < 2:
            out.degenerate_planes += 1
            continue
        values = _plane_values(lab_plane, d)
        if not values:
            continue
        img: ImageScores = image_scores(img_plane, d.modality, window)
        img_bad = image_reason(img, thresholds)
        boxes = ndimage.find_objects(lab_plane.astype(np.int64, copy=False),
                                     max_label=max(v for v, _ in values))
        for value, name in values:
            mask = lab_plane == value
            m = mask_scores(mask, boxes[value - 1])
            seen.add(value)
            sample = SliceSample(d.name, case.case_id, case.image, case.label, k, axis, value,
                                 name, d.modality, m.pixels, instance=d.instance_labels)
            out.candidates.append(Candidate(sample, score_dict(img, m),
                                            img_bad or mask_reason(m, thresholds)))
    if not seen:
        out.candidates.append(_empty(d, case, axes[0]))


def _empty(d: DatasetInfo, case: Case, axis: int) -> Candidate:
    sample = SliceSample(d.name, case.case_id, case.image, case.label, None, axis, 0,
                         EMPTY_CLASS, d.modality, 0)
    return Candidate(sample, {"pixels": 0}, "empty")


def enumerate_candidates(datasets: list[DatasetInfo], axes: Sequence[int] = (2,),
                         thresholds: QualityThresholds | None = None,
                         window: str | None = None, progress: bool = False) -> CandidateSet:
    """Score every (plane, class) of every case of `datasets` (volumes cut along each of
    `axes`: (2,) is what `segmote train` uses; (0, 1, 2) adds the other two orientations)."""
    from tqdm.auto import tqdm

    if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise InputError(f"axes must be distinct values of 0, 1, 2, got {list(axes)}")
    thresholds = thresholds or QualityThresholds()
    out = CandidateSet()
    cases = [(d, c) for d in datasets for c in d.cases]
    for d, case in tqdm(cases, desc="scoring", unit="case", disable=not progress):
        score_case(d, case, axes, thresholds, window, out)
    return out
