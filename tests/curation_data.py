"""Small synthetic datasets with planted bad samples, for the curation tests (CPU, seconds).

Images are smooth random textures (so clarity, contrast and entropy are those of a real slice);
masks are ellipses. Imported by the test modules (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def texture(seed: int, size: int = 64) -> np.ndarray:
    """(size, size) uint8 smooth random texture."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 8 + 1, size // 8 + 1))
    img = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    img = (img + rng.normal(0, 12, img.shape)).clip(0, 255)
    return img.astype(np.uint8)


def ellipse(size: int, centre: tuple[int, int], radii: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1


def clean_label(seed: int, size: int = 64) -> np.ndarray:
    """An organ (1) with a lesion (2) inside it, at a seed-dependent place."""
    rng = np.random.default_rng(seed + 1000)
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    label = np.zeros((size, size), np.uint8)
    label[ellipse(size, (cy, cx), (int(rng.integers(10, 16)), int(rng.integers(10, 16))))] = 1
    label[ellipse(size, (cy + 2, cx - 2), (4, 5))] = 2
    return label


def shredded(label: np.ndarray, value: int) -> np.ndarray:
    """The class cut into 2 x 2 specks by a grid of 1-pixel gaps (a shredded annotation)."""
    out = label.copy()
    yy, xx = np.mgrid[:label.shape[0], :label.shape[1]]
    out[(label == value) & ((yy % 3 == 0) | (xx % 3 == 0))] = 0
    return out


def write_2d(root: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]],
             modality: str = "MR") -> Path:
    """images/ + labels/ PNG dataset with a dataset.json naming the classes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for name, (image, label) in pairs.items():
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
    meta = {"labels": LABELS, "channel_names": {"0": modality}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def planted_dataset(root: Path, n_clean: int = 8) -> tuple[Path, dict[str, str]]:
    """n_clean clean cases + one of each planted defect; returns (folder, case -> expected
    reason of its planted class). Duplicates: dup_a is an exact copy of clean_0, dup_b the
    same image re-saved with +1 grey level."""
    pairs = {f"clean_{i}": (texture(i), clean_label(i)) for i in range(n_clean)}
    img, lab = texture(100), clean_label(100)
    single = lab.copy()
    single[single == 2] = 0
    single[5, 5] = 2
    pairs.update({
        "blank": (np.full((64, 64), 80, np.uint8), clean_label(101)),
        "single_pixel": (img, single),
        "shredded": (texture(102), shredded(clean_label(102), 1)),
        "full_frame": (texture(103), np.where(clean_label(103) == 2, 2, 1).astype(np.uint8)),
        "dup_a": pairs["clean_0"],
        "dup_b": ((pairs["clean_0"][0].astype(np.int16) + 1).clip(0, 255).astype(np.uint8),
                  pairs["clean_0"][1]),
    })
    no_lesion = pairs["clean_1"][1].copy()
    no_lesion[no_lesion == 2] = 1
    pairs["no_lesion"] = (texture(104), no_lesion)  # a missing class is normal: not rejected
    pairs["empty"] = (texture(105), np.zeros((64, 64), np.uint8))
    expected = {"blank": "blank_image", "single_pixel": "tiny", "shredded": "fragmented",
                "full_frame": "fills_frame", "empty": "empty"}
    return write_2d(root, pairs), expected
