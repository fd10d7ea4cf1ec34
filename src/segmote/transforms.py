"""Intensity preprocessing per modality and the resize / pad / map-back geometry.

The pipeline reproduces LiteMedSAM's upstream quality (see docs/preprocessing.md):
1. intensity: CT -> HU window; MR -> clip to the 0.5..99.5 percentiles of each 2-D slice (as the
   reference protocol does); other images -> unchanged;
2. resize so the longest side equals the encoder input (plain bilinear, no antialiasing: that is
   what reproduces the reference Dice numbers within 0.001);
3. min-max to [0, 1] per slice; grey -> 3 channels; zero-pad bottom / right to a square;
4. prompts are scaled by the same factor; logits are cropped to the unpadded part and resized
   bilinearly to the original grid, then thresholded at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segmote.errors import InputError
# the intensity rules themselves are numpy-only (`segmote.intensity`): data and curation use
# them without torch
from segmote.intensity import IntensityRange, intensity_range, normalize_modality

@dataclass(frozen=True)
class ResizeGeometry:
    """Mapping between an (H, W) image and the padded S x S encoder input."""

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    target: int

    @classmethod
    def for_shape(cls, hw: tuple[int, int], target: int) -> ResizeGeometry:
        h, w = hw
        scale = target / max(h, w)
        return cls((h, w), (int(h * scale + 0.5), int(w * scale + 0.5)), target)

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resized_hw[1] / self.orig_hw[1], self.resized_hw[0] / self.orig_hw[0]

    def coords_to_input(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) pixel (x, y) in the original image -> encoder-input pixels."""
        sx, sy = self.scale_xy
        return np.asarray(xy, dtype=np.float32) * np.array([sx, sy], dtype=np.float32)

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x0, y0, x1, y1 -> encoder-input pixels."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 2, 2)
        return self.coords_to_input(b).reshape(-1, 4)

    def logits_to_original(self, logits: Tensor) -> Tensor:
        """(B, M, s, s) low-res logits over the padded input -> (B, M, H, W) logits."""
        s = logits.shape[-1]
        h = int(round(self.resized_hw[0] * s / self.target))
        w = int(round(self.resized_hw[1] * s / self.target))
        return F.interpolate(logits[..., :h, :w], size=self.orig_hw, mode="bilinear",
                             align_corners=False)

    def mask_to_lowres(self, mask: np.ndarray, lowres: int) -> Tensor:
        """A (H, W) mask or logit map -> (1, 1, lowres, lowres) over the padded input grid."""
        h = int(round(self.resized_hw[0] * lowres / self.target))
        w = int(round(self.resized_hw[1] * lowres / self.target))
        t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        return F.pad(t, (0, lowres - w, 0, lowres - h))


def to_input_tensor(image: np.ndarray, geometry: ResizeGeometry,
                    clip: IntensityRange = IntensityRange()) -> Tensor:
    """(H, W) or (H, W, C) image -> (3, S, S) float tensor in [0, 1], zero-padded."""
    x = clip.apply(np.asarray(image))
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise InputError(f"expected a 2-D image or H x W x C, got shape {image.shape}")
    if x.shape[2] == 4:  # drop alpha
        x = x[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
    h, w = geometry.resized_hw
    if (h, w) != tuple(t.shape[-2:]):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    lo, hi = t.amin(), t.amax()
    t = (t - lo) / torch.clamp(hi - lo, min=1e-8)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] != 3:
        raise InputError(f"expected 1, 3 or 4 channels, got {t.shape[1]}")
    s = geometry.target
    return F.pad(t, (0, s - w, 0, s - h))[0]


def preprocess(image: np.ndarray, img_size: int, modality: str | None = None,
               window: str | tuple[float, float] | None = None,
               valid: np.ndarray | None = None) -> tuple[Tensor, ResizeGeometry]:
    """What the encoder sees for one 2-D image: intensity clip, resize, min-max, pad.

    image: (H, W) or (H, W, C). Returns the (3, S, S) float tensor in [0, 1] (S = img_size) and
    the geometry mapping it back. `Segmenter.set_image` and the training embedding cache both call
    this, so training sees exactly the inputs inference does.
    valid: (H, W) bool, False where a NaN / Inf was replaced (`segmote.io.finite`): those pixels
        are left out of the MR percentiles and read as the darkest valid value of this image
        after clipping, so they move neither the clip range nor the min-max of the rest.
        NaN / Inf still in `image` are treated the same way (InputError if nothing is finite).
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 2:
        raise InputError(f"expected a 2-D image (H, W) or (H, W, C), got shape {image.shape}")
    geometry = ResizeGeometry.for_shape(image.shape[:2], img_size)
    finite = np.isfinite(image) if image.dtype.kind in "fc" else None
    if finite is not None and not finite.all():
        # NaN / Inf that reached here unreplaced (a raw array given to `Segmenter.set_image`)
        # would make the whole image NaN: they become invalid pixels, handled as below
        good = finite if image.ndim == 2 else finite.all(axis=-1)
        if not good.any():
            raise InputError(f"image of shape {image.shape} has no finite value (all NaN / Inf)")
        image = np.where(finite, image, 0)
        valid = good if valid is None else valid & good
    clip = intensity_range(image, normalize_modality(modality), window, valid)
    if valid is not None and valid.any() and not valid.all():
        x = clip.apply(image)
        image = np.where(valid if x.ndim == 2 else valid[..., None], x, x[valid].min())
    return to_input_tensor(image, geometry, clip), geometry


# A binary mask given as a prompt becomes logits of this magnitude (SAM expects logits).
MASK_PROMPT_LOGIT = 8.0


def mask_prompt(mask_input: Any, n: int, geometry: ResizeGeometry, size: int,
                device: torch.device) -> Tensor | None:
    """A mask prompt as the decoder takes it: (n, 1, size, size) float32 logits.

    mask_input: None, low-res logits (1 or n, 1, s, s) from an earlier prediction, or an (H, W)
        mask (bool / 0-1, made +-MASK_PROMPT_LOGIT) or logit map on the original grid.
    """
    if mask_input is None:
        return None
    if isinstance(mask_input, Tensor) and mask_input.ndim == 4:
        t = mask_input  # low-res logits from an earlier Prediction
    else:
        m = np.asarray(mask_input)
        if m.shape != geometry.orig_hw:
            raise InputError(f"mask_input shape {m.shape} differs from the image "
                             f"{geometry.orig_hw}")
        if m.dtype == bool or set(np.unique(m)) <= {0, 1}:
            m = (m.astype(np.float32) * 2 - 1) * MASK_PROMPT_LOGIT
        t = geometry.mask_to_lowres(m, size)
    t = t.to(device, torch.float32)
    return t.expand(n, -1, -1, -1) if t.shape[0] == 1 and n > 1 else t
