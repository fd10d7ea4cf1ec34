"""Intensity rules per modality, with numpy only: CT windows, MR percentile clipping, modality
names. The model's preprocessing (`segmote.transforms`) applies them; dataset and curation code
use them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segmote.errors import ParameterError

# (level, width) in HU. "lung" (-1000..400 HU) is the window of the LiteMedSAM reference protocol.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-300.0, 1400.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DEFAULT_CT_WINDOW = "lung"
MR_PERCENTILES = (0.5, 99.5)
MODALITIES = ("CT", "MR", "PET", "XRAY", "US", "ENDOSCOPY", "DERMOSCOPY", "MICROSCOPY", "OTHER")
_ALIASES = {"MRI": "MR", "X-RAY": "XRAY", "CR": "XRAY", "DX": "XRAY", "PT": "PET", "ES": "ENDOSCOPY"}


def normalize_modality(modality: str | None) -> str | None:
    """Canonical modality name (DICOM codes such as 'MR', 'CT', 'CR' accepted), or None."""
    if modality is None:
        return None
    m = _ALIASES.get(modality.strip().upper(), modality.strip().upper())
    if m not in MODALITIES:
        raise ParameterError("modality", f"unknown {{modality}} {modality!r}; choose one of "
                             f"{', '.join(MODALITIES)}")
    return m


def parse_window(window: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """'lung' | 'soft_tissue' | ... | 'LEVEL,WIDTH' -> (lo, hi) in HU."""
    if window is None:
        return None
    if isinstance(window, str):
        if window in CT_WINDOWS:
            level, width = CT_WINDOWS[window]
        else:
            try:
                level, width = (float(v) for v in window.split(","))
            except ValueError:
                raise ParameterError("window", f"{{window}} {window!r}: expected LEVEL,WIDTH or "
                                     f"one of {', '.join(CT_WINDOWS)}") from None
    else:
        level, width = window
    if width <= 0:
        raise ParameterError("window", f"{{window}}: width must be positive, got {width}")
    return level - width / 2, level + width / 2


@dataclass(frozen=True)
class IntensityRange:
    """Clip range applied before min-max; None bounds mean no clipping."""

    lo: float | None = None
    hi: float | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        if self.lo is None and self.hi is None:
            return x
        return np.clip(x, self.lo, self.hi)


def intensity_range(data: np.ndarray, modality: str | None,
                    window: str | tuple[float, float] | None = None,
                    valid: np.ndarray | None = None) -> IntensityRange:
    """Clip range for an image or a whole volume.

    CT uses an HU window (default `DEFAULT_CT_WINDOW`); MR the 0.5 / 99.5 percentiles of
    `data` (the 2-D slice being segmented, as in the reference protocol); anything else: none.
    valid: bool, `data`'s shape (or its first two axes): the values the percentiles may use
        (False where `segmote.io.finite.finite_image` replaced a NaN / Inf); None: all.
    """
    modality = normalize_modality(modality)
    win = parse_window(window)
    if win is not None:
        return IntensityRange(*win)
    if modality == "CT":
        return IntensityRange(*parse_window(DEFAULT_CT_WINDOW))
    if modality == "MR":
        # percentiles on a strided sample: exact enough and bounded cost for big volumes
        if valid is not None and valid.any():
            flat = data[valid].reshape(-1)  # (N,) or (N, C): every channel of a valid pixel
        else:
            flat = data.reshape(-1)
        step = max(1, flat.size // 4_000_000)
        lo, hi = np.percentile(flat[::step], MR_PERCENTILES)
        return IntensityRange(float(lo), float(hi))
    return IntensityRange()
