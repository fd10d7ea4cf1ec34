"""The planted-bad-samples dataset of `bench_curation.py planted` (issue 7): 2-D axial slices of
Colin27 / AAL (real images) as an `images/` + `labels/` PNG dataset, with clean slices, planted
duplicate groups (an exact, a brightened and a noisy copy) and planted bad masks of six kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from curation_common import aal_root

CLEAN_SLICES = list(range(40, 136, 8))  # 12 axial slices, 8 mm apart
PER_KIND = 10
DUP_SLICES = CLEAN_SLICES[:5]
KINDS = ("empty", "single_pixel", "shredded", "salt_noise", "inverted", "blank_image")


def _aal_axial() -> tuple[np.ndarray, np.ndarray, dict]:
    """(uint8 axial image planes (H, W, Z), label planes, dataset.json labels) of AAL."""
    from segmote.data.files import read_label
    from segmote.io import read_image

    root = aal_root()
    img = np.asarray(read_image(root / "imagesTr" / "colin27_0000.nii.gz").array, np.float32)
    lab = read_label(root / "labelsTr" / "colin27.nii.gz")
    lo, hi = np.percentile(img, [0.5, 99.5])
    img8 = np.clip((img - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    # volume_slice(axis 2) = vol[:, :, k].T: rows j, cols i, as inference cuts it
    planes_i = np.stack([img8[:, :, k].T for k in range(img8.shape[2])], -1)
    planes_l = np.stack([lab[:, :, k].T for k in range(lab.shape[2])], -1).astype(np.uint8)
    labels = json.loads((root / "dataset.json").read_text())["labels"]
    return planes_i, planes_l, labels


def _drop_small(label: np.ndarray, min_px: int = 10) -> np.ndarray:
    counts = np.bincount(label.ravel())
    small = np.flatnonzero((counts > 0) & (counts < min_px))
    return np.where(np.isin(label, small), 0, label).astype(np.uint8)


def _largest_region(label: np.ndarray) -> int:
    counts = np.bincount(label.ravel())
    counts[0] = 0
    return int(counts.argmax())


def write_planted(root: Path) -> dict[str, dict]:
    """Write the planted 2-D dataset; returns case -> {"kind", "value"} for the planted cases."""
    images, labels, names = _aal_axial()
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    truth: dict[str, dict] = {}

    def save(case: str, image: np.ndarray, label: np.ndarray) -> None:
        Image.fromarray(image).save(root / "images" / f"{case}.png")
        Image.fromarray(label).save(root / "labels" / f"{case}.png")

    for z in CLEAN_SLICES:
        save(f"clean_z{z:03d}", images[..., z], _drop_small(labels[..., z]))
    for z in DUP_SLICES:
        img, lab = images[..., z], _drop_small(labels[..., z])
        noisy = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
        for tag, copy in (("exact", img), ("plus2", np.clip(img.astype(int) + 2, 0, 255)
                                            .astype(np.uint8)), ("noise2", noisy)):
            save(f"dup_z{z:03d}_{tag}", copy, lab)
            truth[f"dup_z{z:03d}_{tag}"] = {"kind": "duplicate", "of": f"clean_z{z:03d}"}
    bad_slices = [z + 4 for z in CLEAN_SLICES][:PER_KIND]
    yy, xx = np.mgrid[:images.shape[0], :images.shape[1]]
    for kind in KINDS:
        for n, z in enumerate(bad_slices):
            img, lab = images[..., z], _drop_small(labels[..., z])
            v = _largest_region(lab) if kind != "single_pixel" else int(lab[lab > 0][n * 7])
            region = lab == v
            out = np.zeros_like(lab)
            if kind == "single_pixel":
                r, c = np.argwhere(region)[len(np.argwhere(region)) // 2]
                out[r, c] = v
            elif kind == "shredded":
                out[region & (yy % 3 != 0) & (xx % 3 != 0)] = v
            elif kind == "salt_noise":
                out[rng.random(lab.shape) < 0.02] = v
            elif kind == "inverted":
                out[~region] = v
            elif kind == "blank_image":
                out[region] = v
                img = np.full_like(img, int(img.mean()))
            case = f"bad_{kind}_{n}"
            save(case, img, out)
            truth[case] = {"kind": kind, "value": v if kind != "empty" else 0}
    meta = {"labels": names, "channel_names": {"0": "MR"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return truth
