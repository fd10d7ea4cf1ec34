"""Quick-look PNG: the image in grey with each label's contour drawn in colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from segmote.atomic import atomic_path
from segmote.errors import InputError, ParameterError

_COLOURS = np.array([[255, 64, 64], [64, 255, 64], [64, 128, 255], [255, 224, 32],
                     [255, 64, 255], [32, 224, 224]], dtype=np.uint8)


def render_overlay(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """image (H, W) or (H, W, C), label (H, W) ints -> (H, W, 3) uint8 with contours."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    lo, hi = np.percentile(img, (0.5, 99.5))
    grey = (np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for n, value in enumerate(v for v in np.unique(label) if v != 0):
        mask = label == value
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        rgb[ndimage.binary_dilation(edge)] = _COLOURS[n % len(_COLOURS)]
    return rgb


def check_png(path: str | Path | None, param: str) -> None:
    """A figure the caller asked for (parameter `param`) must be a .png file."""
    if path is not None and Path(path).suffix.lower() != ".png":
        raise ParameterError(param, f"{path}: {{{param}}} must be a .png file")


def save_overlay(image: np.ndarray, label: np.ndarray, path: str | Path) -> Path:
    """Write the overlay PNG atomically (temp file + rename)."""
    from PIL import Image
    path = Path(path)
    check_png(path, "overlay")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(render_overlay(image, label)).save(tmp)
    return path
