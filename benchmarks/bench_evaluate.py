"""Benchmark `evaluate_folders` on 50 synthetic CT-sized label volumes.

Each case is 256x256x128 voxels at (0.8, 0.8, 2.5) mm with three classes of smooth, irregular
blobs (a large "liver", a "kidney", a small "tumour" inside the liver); the prediction is the
ground truth with a jittered boundary, a small shift and now and then a missed tumour, so the
surface-distance work is realistic. Files are written as .nii.gz to a temp dir; only the
evaluation is timed.

    python benchmarks/bench_evaluate.py [--cases 50] [--out benchmarks/results/evaluate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SHAPE = (256, 256, 128)
SPACING = (0.8, 0.8, 2.5)
# name: (centre, radii) in voxels; the tumour sits inside the liver.
CLASSES = {
    1: ("liver", (100, 120, 64), (60, 45, 22)),
    2: ("kidney", (180, 150, 60), (18, 14, 12)),
    3: ("tumour", (95, 115, 66), (9, 8, 4)),
}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled linearly to ``shape``."""
    coarse = rng.uniform(-1, 1, size=tuple(max(2, n // 8) for n in shape)).astype(np.float32)
    zoom = [n / c for n, c in zip(shape, coarse.shape)]
    return ndimage.zoom(coarse, zoom, order=1, grid_mode=True, mode="nearest")[
        tuple(slice(0, n) for n in shape)
    ]


def _blob(rng, centre, radii, jitter: float, shift=(0, 0, 0)) -> tuple[tuple[slice, ...], np.ndarray]:
    """An ellipsoid with a noisy boundary, computed in its own bounding box only."""
    box = tuple(
        slice(max(0, c + s - int(1.5 * r)), min(n, c + s + int(1.5 * r) + 1))
        for c, s, r, n in zip(centre, shift, radii, SHAPE)
    )
    grids = np.ogrid[box]
    level = sum(((g - (c + s)) / r) ** 2 for g, c, s, r in zip(grids, centre, shift, radii))
    sub_shape = tuple(sl.stop - sl.start for sl in box)
    return box, (level + jitter * _smooth_noise(rng, sub_shape)) < 1.0


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) uint8 label volumes of SHAPE."""
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    for class_id, (_, centre, radii) in CLASSES.items():
        centre = tuple(int(c + d) for c, d in zip(centre, rng.integers(-6, 7, size=3)))
        radii = tuple(r * rng.uniform(0.85, 1.15) for r in radii)
        box, mask = _blob(rng, centre, radii, jitter=0.35)
        gt[box][mask] = class_id
        if class_id == 3 and rng.random() < 0.1:
            continue  # now and then the model misses the tumour entirely
        shift = tuple(int(s) for s in rng.integers(-2, 3, size=3) * (1, 1, 0))
        box, mask = _blob(rng, centre, radii, jitter=0.45, shift=shift)
        pred[box][mask] = class_id
    return gt, pred


def write_dataset(root: Path, n_cases: int) -> tuple[Path, Path]:
    affine = np.diag([*SPACING, 1.0])
    for sub in ("gt", "pred"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        gt, pred = make_case(i)
        nib.save(nib.Nifti1Image(gt, affine), root / "gt" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(pred, affine), root / "pred" / f"case_{i:03d}.nii.gz")
    return root / "pred", root / "gt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/evaluate.json"))
    args = parser.parse_args(argv)

    from segmote.evaluation.evaluate import evaluate_folders

    labels = {k: name for k, (name, _, _) in CLASSES.items()}
    with tempfile.TemporaryDirectory(prefix="segmote-bench-") as tmp:
        t0 = time.perf_counter()
        pred_dir, gt_dir = write_dataset(Path(tmp), args.cases)
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = evaluate_folders(pred_dir, gt_dir, labels=labels, nsd_mm=2.0,
                                   out_csv=Path(tmp) / "results.csv")
        wall = time.perf_counter() - t0
    print(summary.format_table())
    print(f"evaluate_folders: {args.cases} cases {SHAPE} in {wall:.1f} s "
          f"({wall / args.cases:.2f} s/case; data generation {t_make:.1f} s, not timed)")
    result = {
        "benchmark": "evaluate_folders",
        "n_cases": args.cases,
        "shape": SHAPE,
        "spacing_mm": SPACING,
        "n_classes": len(CLASSES),
        "wall_s": round(wall, 3),
        "s_per_case": round(wall / args.cases, 4),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "overall_mean": summary.overall,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
