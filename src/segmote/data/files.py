"""Small readers behind dataset discovery: JSON, label maps, header-only shapes, modality names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from segmote.errors import InputError
from segmote.io import read_image
from segmote.io.image import READ_FORMATS, short_reason, split_ext
from segmote.intensity import normalize_modality

MAX_LABEL = int(np.iinfo(np.uint16).max)  # the embedding cache stores label maps as uint16


def read_json(path: Path) -> dict:
    """A JSON object from a file; InputError naming the file if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read JSON ({short_reason(err)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def channel_modality(name: str | None) -> str | None:
    """Modality from a channel name ("CT", "MRI", "T2", "FLAIR", "fluorescence microscopy");
    None when the name says nothing we know (nnU-Net's "zscore", "noNorm", ...)."""
    if not name:
        return None
    try:
        return normalize_modality(name)
    except InputError:
        pass
    text = name.upper()
    words = set(re.split(r"[^A-Z0-9]+", text))
    if "CT" in words:
        return "CT"
    if words & {"MR", "MRI", "FLAIR", "ADC", "DWI", "PD", "SWI", "T1", "T2", "T1W", "T2W",
                "T1GD", "T1C", "T1CE", "T2STAR"}:
        return "MR"
    for part, modality in (("MICROSCOP", "MICROSCOPY"), ("DERMOSCOP", "DERMOSCOPY"),
                           ("ENDOSCOP", "ENDOSCOPY"), ("ULTRASOUND", "US"), ("XRAY", "XRAY"),
                           ("X-RAY", "XRAY"), ("PET", "PET")):
        if part in text:
            return modality
    return None


def channel0(spec: Any) -> str | None:
    """Name of channel 0 in a {"0": name, ...} map (nnU-Net channel_names, MSD modality)."""
    return spec.get("0") if isinstance(spec, dict) else None


def parse_labels(raw: Any, path: Path) -> dict[int, str]:
    """nnU-Net {name: value} or MSD {"value": name} -> {value: name}, background and ignore out."""
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: 'labels' must be a non-empty object")
    msd = all(isinstance(k, str) and k.strip().isdigit() and isinstance(v, str)
              for k, v in raw.items())
    pairs = [(int(k), v) for k, v in raw.items()] if msd else [(v, k) for k, v in raw.items()]
    labels: dict[int, str] = {}
    for value, name in pairs:
        if isinstance(value, (list, tuple)):
            raise InputError(f"{path}: label {name!r} is a region {value}; region-based labels "
                             "are not supported, give one value per class")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LABEL:
            raise InputError(f"{path}: label {name!r} has value {value!r}; expected an integer "
                             f"0..{MAX_LABEL}")
        if value == 0 or str(name).lower() == "ignore":
            continue  # background; nnU-Net's ignore label is not a class to learn
        labels[value] = str(name)
    if not labels:
        raise InputError(f"{path}: 'labels' names no foreground class")
    return labels


def read_label(path: Path) -> np.ndarray:
    """A label map as an integer array: (X, Y, Z) for volumes, (H, W) for 2-D images.

    Palette PNGs keep their indices (a plain read would turn them into RGB colours)."""
    path = Path(path)
    if split_ext(path)[1] == ".png":
        from PIL import Image
        try:
            with Image.open(path) as img:
                if img.mode == "P":
                    return np.array(img)
        except OSError:
            pass  # read_image below gives the one-line error
    data = read_image(path)
    array = data.array
    if array.ndim == 3 and not data.is_volume:
        raise InputError(f"{path}: label map has {array.shape[2]} channels; expected one")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"{path}: label map holds non-integer values")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "biu":
        raise InputError(f"{path}: label map has dtype {array.dtype}, expected integers")
    if array.size and (array.min() < 0 or array.max() > MAX_LABEL):
        raise InputError(f"{path}: label values must lie in 0..{MAX_LABEL}, found "
                         f"{array.min()}..{array.max()}")
    return array


def image_shape(path: Path) -> tuple[tuple[int, ...], bool]:
    """(shape, is_volume) of an image file from its header when the format allows, so discovery
    does not decode every volume. Shapes follow `read_image`: (X, Y, Z) or (H, W[, C])."""
    fmt = READ_FORMATS.get(split_ext(path)[1])
    try:
        if fmt == "nifti":
            import nibabel as nib
            shape = nib.load(path).shape
            if len(shape) == 2 or (len(shape) >= 3 and all(n == 1 for n in shape[3:])):
                return (tuple(shape[:3]) + (1,) * (3 - len(shape[:3]))), True
        elif fmt in ("nrrd", "mha"):
            import SimpleITK as sitk
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = reader.GetSize()
            if reader.GetNumberOfComponents() == 1 and len(size) in (2, 3):
                return tuple(size) + (1,) * (3 - len(size)), True
        elif fmt in ("png", "bmp"):
            from PIL import Image
            with Image.open(path) as img:
                w, h = img.size
            return (h, w), False
    except Exception:  # noqa: BLE001 - any header problem: let read_image give the error line
        pass
    data = read_image(path)
    return data.shape, data.is_volume


class RecentFiles:
    """The reader cache: keeps the last few images and label maps read, since the slices of one
    case come together (and label sets drawn on one image alternate), so each file is read once
    per run of its slices. Arrays are C-contiguous (slicing a transposed reader view per slice
    would copy the whole volume)."""

    KEEP = 4

    def __init__(self) -> None:
        self._cache: dict[str, dict[Path, np.ndarray]] = {"image": {}, "label": {}}

    def _get(self, kind: str, path: Path, read) -> np.ndarray:
        held = self._cache[kind]
        path = Path(path)
        if path not in held:
            if len(held) >= self.KEEP:
                del held[next(iter(held))]  # the oldest
            held[path] = read(path)
        return held[path]

    def image(self, path: str | Path) -> np.ndarray:
        """The array of an image or volume file (`segmote.io.read_image`)."""
        return self._get("image", path, lambda p: np.ascontiguousarray(read_image(p).array))

    def label(self, path: str | Path) -> np.ndarray:
        """The integer label map of a file (`read_label`)."""
        return self._get("label", path, lambda p: np.ascontiguousarray(read_label(p)))
