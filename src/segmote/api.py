"""High-level typed functions behind the CLI (usable from Python too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segmote.errors import InputError


@dataclass
class PredictResult:
    output: Path
    label: np.ndarray
    summary: str


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _tqdm(total_desc: str):
    from tqdm import tqdm
    return lambda it: tqdm(it, desc=total_desc, unit="slice", leave=False)


def predict_file(input_path: str | Path, output: str | Path, boxes: Sequence[str] = (),
                 points: Sequence[str] = (), labels: Sequence[int] = (),
                 backbone: str = "litemedsam", checkpoint: str | Path | None = None,
                 adapter: str | Path | None = "default", modality: str | None = None,
                 window: str | None = None, axis: int = 2, overlay: str | Path | None = None,
                 device: str = "cpu", progress: bool = False) -> PredictResult:
    """Read an image or volume, segment every prompted object, write a label map with the input's
    geometry (and optionally an overlay PNG). All inputs are checked before any model work and
    nothing is written unless everything succeeded."""
    from segmote.build import load_model
    from segmote.cli.predict import parse_objects
    from segmote.inference import (check_prompts, guess_modality, segment_image, segment_volume,
                                   volume_slice)
    from segmote.io import output_path_for, read_image, write_label
    from segmote.overlay import save_overlay
    from segmote.predictor import Segmenter
    from segmote.transforms import normalize_modality, parse_window

    data = read_image(input_path)
    out_path = output_path_for(data, output)
    depth = data.array.shape[axis] if data.is_volume else 1
    objects = parse_objects(list(boxes), list(points), list(labels), data.is_volume, depth)
    check_prompts(objects, data.array.shape, data.is_volume)
    modality = normalize_modality(modality) or guess_modality(data)
    parse_window(window)  # validate before the model loads
    if overlay is not None and Path(overlay).suffix.lower() != ".png":
        raise InputError(f"{overlay}: --overlay must be a .png file")
    dev = resolve_device(device)
    if adapter in ("none", "None"):
        adapter = None
    seg = Segmenter(load_model(backbone, checkpoint, adapter=adapter, device=dev))
    if data.is_volume:
        label = segment_volume(seg, data, objects, axis, modality, window,
                               _tqdm("slices") if progress else None)
    else:
        label = segment_image(seg, data, objects, modality, window)
    written = write_label(label, data, out_path)
    if overlay is not None:
        if data.is_volume:
            first = next(o for o in objects)
            k = int(round((first.box[axis] + first.box[axis + 3]) / 2)) if first.box else \
                int(round(first.points[0][axis]))
            save_overlay(volume_slice(data.array, k, axis), volume_slice(label, k, axis), overlay)
        else:
            save_overlay(data.array, label, overlay)
    counts = {int(v): int(c) for v, c in zip(*np.unique(label, return_counts=True)) if v}
    summary = f"shape {label.shape}, modality {modality or 'none'}, voxels per label {counts}"
    return PredictResult(written, label, summary)
