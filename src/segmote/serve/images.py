"""What the page receives about an image: its description, slice pixels and label PNGs."""

from __future__ import annotations

import io

import numpy as np

from segmote.serve.session import ImageSession


def intensity_stats(array: np.ndarray) -> dict[str, float]:
    """min, max and the 0.5 / 99.5 percentiles (MR auto-contrast) on a strided sample."""
    flat = array.reshape(-1)
    sample = flat[:: max(1, flat.size // 2_000_000)].astype(np.float32)
    lo, hi = np.percentile(sample, (0.5, 99.5))
    return {"min": float(sample.min()), "max": float(sample.max()), "p_low": float(lo),
            "p_high": float(hi)}


def image_info(session: ImageSession, classes: list[str]) -> dict:
    """The answer to an upload: id, shape, spacing, modality, classes, and what the page needs
    to show it (is_volume, channels, intensity range)."""
    data = session.data
    return {"id": session.id, "name": session.name, "shape": list(data.shape),
            "spacing": [float(s) for s in data.spacing], "modality": session.modality,
            "window": session.window, "classes": classes, "is_volume": data.is_volume,
            "format": data.format,
            "channels": 1 if data.is_volume or data.array.ndim == 2 else data.array.shape[2],
            "intensity": intensity_stats(data.array)}


def slice_pixels(session: ImageSession, axis: int, k: int) -> tuple[bytes, dict[str, str]]:
    """Slice k as raw little-endian bytes: grey as float32 (H, W), colour as uint8 (H, W, C)
    (min-max scaled when stored otherwise); shape and type in X-Shape / X-Dtype headers."""
    image = session.slice_image(axis, k)
    if image.ndim == 3:
        if image.dtype != np.uint8:
            lo, hi = float(image.min()), float(image.max())
            image = ((image - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8)
        body, dtype = np.ascontiguousarray(image).tobytes(), "uint8"
    else:
        body, dtype = np.ascontiguousarray(image, dtype="<f4").tobytes(), "float32"
    shape = ",".join(str(s) for s in image.shape)
    return body, {"X-Shape": shape, "X-Dtype": dtype, "Cache-Control": "no-store"}


def label_png(view: np.ndarray) -> bytes:
    """(H, W) label values as a grey PNG: 8-bit when every value fits, else 16-bit."""
    from PIL import Image

    image = Image.fromarray(view.astype(np.uint8) if view.max(initial=0) < 256
                            else view.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
