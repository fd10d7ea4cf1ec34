"""The LiteMedSAM reference protocol (docs/data.md): tight-box Dice on the real samples.

Used by the faithfulness test and the benchmark suite to show our re-implementation reproduces
the upstream model: the same slices, boxes and preprocessing give the same Dice.

Protocols:
- pyradiomics lesions: every labelled slice with >= 20 foreground pixels; image `vol[:, :, z].T`;
  CT clipped to -1000..400 HU, MR to the slice's 0.5..99.5 percentiles; box = tight box + 2 px.
- nuclei (DSB2018): every instance with >= 30 px; raw intensities; box = tight box + 1 px.
- Colin27 / AAL: axial slices `np.rot90(vol[:, :, z])` from the middle half of the structure's
  z-range, box + 2 px, MR slice percentiles; brain mask = ch2bet > 0. docs/data.md does not say
  whether "thalamus" means the left, the right or both AAL regions, nor how the T1 was scaled;
  of the variants we measured (docs/benchmarks.md) the left region with the MR slice
  percentiles comes closest (within 0.012 for each structure), so that is the protocol here.
Dice per instance (slice or nucleus), averaged; logits thresholded at 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segmote.predict.segmenter import Segmenter

# docs/data.md's reference Dice for LiteMedSAM (n = instances).
REFERENCE_DICE: dict[str, float] = {
    "lung2": 0.936, "brain1": 0.885, "lung1": 0.839, "breast1": 0.660, "brain2": 0.537,
    "nuclei": 0.758, "thalamus": 0.90, "hippocampus": 0.67, "caudate": 0.54, "brain_mask": 0.764,
}
# Sets whose protocol docs/data.md states completely must match to 0.01. The atlas sets' protocol is
# under-specified (see above); their tolerance is wider and the gap is reported, not hidden.
REFERENCE_TOLERANCE: dict[str, float] = {name: 0.01 for name in REFERENCE_DICE} | {
    "thalamus": 0.02, "hippocampus": 0.02, "caudate": 0.02, "brain_mask": 0.05}


@dataclass
class Instance:
    """One reference prompt: a 2-D image, its ground-truth mask and the box to give."""

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]
    modality: str | None


def padded_box(mask: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    """Tight box of a (H, W) mask, padded and clamped: (x0, y0, x1, y1) pixel indices."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0),
            min(int(xs.max()) + pad, w - 1), min(int(ys.max()) + pad, h - 1))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else float(2 * (pred & gt).sum() / s)


def lesion_instances(image_path: Path, label_path: Path, modality: str) -> Iterator[Instance]:
    from segmote.io import read_image
    vol, lab = read_image(image_path).array, read_image(label_path).array
    for z in range(vol.shape[2]):
        gt = lab[:, :, z].T > 0
        if gt.sum() >= 20:
            yield Instance(vol[:, :, z].T, gt, padded_box(gt, 2), modality)


def nuclei_instances(image_path: Path, instance_path: Path) -> Iterator[Instance]:
    from segmote.io import read_image
    img, inst = read_image(image_path).array, read_image(instance_path).array
    for value in np.unique(inst):
        gt = inst == value
        if value != 0 and gt.sum() >= 30:
            yield Instance(img, gt, padded_box(gt, 1), None)


def atlas_instances(image_path: Path, mask3d: np.ndarray) -> Iterator[Instance]:
    from segmote.io import read_image
    vol = read_image(image_path).array
    zs = np.nonzero(mask3d.any(axis=(0, 1)))[0]
    quarter = (zs.max() - zs.min()) / 4
    for z in range(int(np.ceil(zs.min() + quarter)), int(np.floor(zs.max() - quarter)) + 1):
        gt = np.rot90(mask3d[:, :, z])
        if gt.any():
            yield Instance(np.rot90(vol[:, :, z]), gt, padded_box(gt, 2), "MR")


def reference_sets(home: Path) -> dict[str, Callable[[], Iterator[Instance]]]:
    """name -> instance generator over the fetched samples under `home/samples`."""
    from segmote.io import read_image
    s = home / "samples"
    ct, mr = s / "pyradiomics/Dataset001_PyradiomicsCT", s / "pyradiomics/Dataset002_PyradiomicsMR"
    sets: dict[str, Callable[[], Iterator[Instance]]] = {}
    for case, root, mod in [("lung2", ct, "CT"), ("lung1", ct, "CT"), ("brain1", mr, "MR"),
                            ("brain2", mr, "MR"), ("breast1", mr, "MR")]:
        sets[case] = (lambda c=case, r=root, m=mod: lesion_instances(
            r / f"imagesTr/{c}_0000.nrrd", r / f"labelsTr/{c}.nrrd", m))
    nuc = s / "nuclei"
    sets["nuclei"] = lambda: nuclei_instances(nuc / "images/nuclei_000.png",
                                              nuc / "instances/nuclei_000.png")
    aal_root = s / "colin27/Dataset003_Colin27AAL"
    img = aal_root / "imagesTr/colin27_0000.nii.gz"

    def structure(name: str) -> Iterator[Instance]:
        labels = json.loads((aal_root / "dataset.json").read_text())["labels"]
        aal = read_image(aal_root / "labelsTr/colin27.nii.gz").array
        yield from atlas_instances(img, aal == labels[f"{name}_L"])

    for name in ("Thalamus", "Hippocampus", "Caudate"):
        sets[name.lower()] = lambda n=name: structure(n)
    brain = s / "colin27/Dataset004_Colin27Brain/labelsTr/colin27.nii.gz"
    sets["brain_mask"] = lambda: atlas_instances(img, read_image(brain).array > 0)
    return sets


def run_reference(seg: Segmenter, instances: Iterator[Instance],
                  **predict_kwargs) -> list[float]:
    """Dice per instance; the image is encoded once per distinct slice."""
    scores, last = [], None
    for inst in instances:
        if last is None or last is not inst.image and not np.array_equal(last, inst.image):
            seg.set_image(inst.image, modality=inst.modality)
            last = inst.image
        mask, _ = seg.predict(box=inst.box, **predict_kwargs)
        scores.append(dice(mask, inst.mask))
    return scores
