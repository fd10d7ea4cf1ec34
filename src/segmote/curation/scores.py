"""Per-sample quality scores and sanity rules (the paper's five MedSeg-HQ criteria, plus mask
sanity checks).

A sample is one (image plane, class mask). Image scores are computed once per plane on the
intensities the encoder sees (`segmote.intensity.intensity_range`: CT window, MR percentiles,
else min-max; then scaled to [0, 1]); mask scores per class.

Image (shared by every class of the plane):
    sharpness  variance of the 4-neighbour Laplacian of the [0, 1] image (image clarity)
    contrast   RMS contrast: standard deviation of the [0, 1] image
    entropy    Shannon entropy in bits of the 256-bin intensity histogram (0..8)
Mask:
    pixels, foreground_ratio (pixels / plane area), components (8-connected),
    largest_fraction (share of the mask in its largest component),
    isolated_fraction (share of the mask in components of <= 2 pixels: label noise),
    border_fraction (share of the plane's border pixels inside the mask).

`QualityThresholds` holds the rejection rules; every default is justified next to it. The rules
are deliberately lenient for real anatomy (many structures are legitimately small, thin or split
into a few parts on a slice) and strict for what is never a usable training target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from segmote.errors import InputError
from segmote.intensity import intensity_range

# reasons, in the order they are checked (the first that applies is reported)
IMAGE_REASONS = ("blank_image", "low_contrast", "low_entropy", "blurry")
MASK_REASONS = ("empty", "tiny", "fills_frame", "isolated_pixels", "fragmented")
REASONS = IMAGE_REASONS + MASK_REASONS + ("duplicate",)

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal pixels belong together


@dataclass
class QualityThresholds:
    """Rejection rules. A sample is rejected for the first rule it breaks (order: `REASONS`).

    min_contrast 0.02: a [0, 1] image whose standard deviation is below 2 % of the range is a
        blank or saturated frame (a constant image has 0; real CT/MR/microscopy slices measured
        here: >= 0.08). Below it the encoder sees no structure. `blank_image` (range exactly 0)
        is reported separately because it is never a judgement call.
    min_entropy 1.0 bit: fewer than ~2 effectively used grey levels: a binary or nearly constant
        frame (a mask saved as the image, a blank frame with sparse noise); real slices: >= 2.5.
    min_sharpness 1e-4: variance of the Laplacian of the [0, 1] image. A slice blurred with a
        Gaussian of sigma ~8 px falls below it; every real slice measured (1 mm MR, CT, H&E)
        lies above 5e-4. Set 0 to disable for very smooth modalities (e.g. ultrasound).
    min_pixels 10: the trainer's `min_foreground` default: fewer pixels than that give no usable
        box (a 3 x 3 blob) and are mostly annotation slips at the edge of a structure.
    max_foreground_ratio 0.95 / max_border_fraction 0.95: a mask covering (nearly) the whole
        plane and the whole border is an inverted or filled-in label, not an object.
    max_isolated_fraction 0.2: when more than a fifth of the mask lies in 1-2 pixel specks, the
        mask is salt noise or a shredded annotation; real masks (AAL atlas regions, tumours,
        nuclei) stay far below it.
    max_components 12 and min_component_pixels 20: a mask in more than 12 parts whose parts
        average under 20 pixels is shredded. Both conditions are needed: a brain region cut by
        a slice legitimately shows a few parts (AAL atlas: up to 12 on sagittal slices; the
        Colin27 brain mask up to 14 large ones), and a semantic nuclei mask shows ~100 parts of
        30-100 pixels each.
    """

    min_contrast: float = 0.02
    min_entropy: float = 1.0
    min_sharpness: float = 1e-4
    min_pixels: int = 10
    max_foreground_ratio: float = 0.95
    max_border_fraction: float = 0.95
    max_isolated_fraction: float = 0.2
    max_components: int = 12
    min_component_pixels: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> QualityThresholds:
        """Defaults overridden by `values`; InputError naming `source` for unknown keys or
        values that are not non-negative numbers."""
        names = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise InputError(f"{source}: unknown threshold(s) {', '.join(unknown)}; known: "
                             f"{', '.join(names)}")
        out = cls()
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"{source}: threshold {key} must be a non-negative number, "
                                 f"got {value!r}")
            setattr(out, key, int(value) if key in ("min_pixels", "max_components")
                    else float(value))
        return out


@dataclass(frozen=True)
class ImageScores:
    sharpness: float
    contrast: float
    entropy: float
    dynamic_range: float  # max - min of the clipped intensities (0: a constant image)


@dataclass(frozen=True)
class MaskScores:
    pixels: int
    foreground_ratio: float
    components: int
    largest_fraction: float
    isolated_fraction: float
    border_fraction: float


def normalized_plane(image: np.ndarray, modality: str | None,
                     window: str | None = None) -> tuple[np.ndarray, float]:
    """(H, W[, C]) image -> ((H, W) float32 in [0, 1], dynamic range before scaling).

    Colour images are averaged to grey; the clip is what preprocessing applies."""
    image = np.asarray(image)
    grey = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    x = intensity_range(grey, modality, window).apply(grey)
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo
    return ((x - lo) / span if span > 0 else np.zeros_like(x)), span


def image_scores(image: np.ndarray, modality: str | None, window: str | None = None,
                 ) -> ImageScores:
    """Clarity, contrast and entropy of one (H, W[, C]) plane (see the module doc)."""
    x, span = normalized_plane(image, modality, window)
    sharpness = float(ndimage.laplace(x, mode="nearest").var())
    hist = np.bincount(np.minimum((x * 256).astype(np.int64), 255).ravel(), minlength=256)
    p = hist[hist > 0] / x.size
    return ImageScores(sharpness, float(x.std()), float(-(p * np.log2(p)).sum()), span)


def mask_scores(mask: np.ndarray, box: tuple[slice, slice] | None = None) -> MaskScores:
    """Shape scores of one (H, W) boolean mask; `box` (its bounding box, e.g. from
    `ndimage.find_objects`) saves the component labelling from scanning the whole plane."""
    h, w = mask.shape
    pixels = int(mask.sum()) if box is None else int(mask[box].sum())
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    border_fraction = float(border.mean()) if border.size else 0.0
    if pixels == 0:
        return MaskScores(0, 0.0, 0, 0.0, 0.0, border_fraction)
    crop = mask[box] if box is not None else mask
    labels, n = ndimage.label(crop, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    return MaskScores(pixels, pixels / (h * w), int(n), float(sizes.max() / pixels),
                      float(sizes[sizes <= 2].sum() / pixels), border_fraction)


def image_reason(s: ImageScores, t: QualityThresholds) -> str | None:
    """The first image rule `s` breaks, or None."""
    if s.dynamic_range == 0:
        return "blank_image"
    if s.contrast < t.min_contrast:
        return "low_contrast"
    if s.entropy < t.min_entropy:
        return "low_entropy"
    if s.sharpness < t.min_sharpness:
        return "blurry"
    return None


def mask_reason(s: MaskScores, t: QualityThresholds) -> str | None:
    """The first mask rule `s` breaks, or None."""
    if s.pixels == 0:
        return "empty"
    if s.pixels < t.min_pixels:
        return "tiny"
    if s.foreground_ratio > t.max_foreground_ratio or s.border_fraction > t.max_border_fraction:
        return "fills_frame"
    if s.isolated_fraction > t.max_isolated_fraction:
        return "isolated_pixels"
    if s.components > t.max_components and s.pixels / s.components < t.min_component_pixels:
        return "fragmented"
    return None


def quality(img: ImageScores, m: MaskScores) -> float:
    """One number in [0, 1] for ranking accepted samples (higher is better): it picks the
    representative of a duplicate group and weights the draw within a balance cell.

    Product of saturating terms, so no single score dominates once it is good enough:
    contrast (full credit from 0.15), entropy (from 4 bits), sharpness (from 1e-3),
    mask coherence (largest_fraction x (1 - isolated_fraction)) and size (full credit from
    100 pixels, log scale: a 20-pixel mask still scores 0.65).
    """
    def sat(v: float, full: float) -> float:
        return float(min(1.0, max(0.0, v / full)))

    size = sat(np.log10(max(m.pixels, 1)), 2.0)
    coherence = m.largest_fraction * (1.0 - m.isolated_fraction)
    image = np.sqrt(sat(img.contrast, 0.15) * sat(img.entropy, 4.0) * sat(img.sharpness, 1e-3))
    return round(float(image * coherence * size), 6)


def score_dict(img: ImageScores, m: MaskScores) -> dict[str, float]:
    """All scores of a sample, rounded for the manifest (floats to 6 significant digits)."""
    out: dict[str, float] = {}
    for k, v in {**asdict(img), **asdict(m)}.items():
        out[k] = v if isinstance(v, int) else float(f"{v:.6g}")
    out["quality"] = quality(img, m)
    return out
