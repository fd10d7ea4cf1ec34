"""The typed options of `predict_file` and its result (no model, no I/O: the CLI and the web
app build these from their own inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PredictOptions:
    """How to segment (everything but the image and the prompts).

    backbone, checkpoint: the base model (`segmote.build.load_model`). adapter: a SegMoTE
        adapter file, "default" (the shipped one), "new" (untrained) or None (the base model).
    modality: "CT", "MR", ... (default: from the file, or CT for Hounsfield-like values);
        window: CT window "LEVEL,WIDTH" or a preset name. axis: the volume axis to slice along.
    overlay: write a PNG of the image with the label contours (a volume: its middle prompted
        slice). device: "cpu", "cuda" or "cuda:N". progress: a progress bar over slices.
    routing: collect the SegMoTE router's choice for every prompt (`PredictResult.routing`).
    attention: write the expert tokens' attention maps for the first object as a PNG (a
        volume: the middle slice of its range, like the overlay). Both need an adapter.
    text: a class name; beside boxes / points it is given with every object; alone it asks for
        prompt-free segmentation of that class (like auto with classes=[text]).
    auto: prompt-free segmentation of `classes` (default: every class the adapter knows, only
        those trained on the image's modality when the adapter records it) into one label
        map, value i = i-th class; every slice of a volume. threshold: confidence needed to
        keep a class's mask (default: the adapter's calibrated one).
    precision: "fp32", "bf16" or "fp16": the autocast of all model work (None: the device's
        default, `segmote.precision.default_precision`: fp32 until bf16 is measured on a GPU).
    batch_size: slices of a volume per encoder call (None: the device's default,
        `segmote.batching.default_batch_size`: 32 on a GPU, 1 on a CPU).
    every_slice, propagate, key_slice (volumes, `segmote.predict.propagation`): a 3-D box with
        k0 < k1 is followed from its middle slice (or `key_slice`) inside its slices, unless
        `every_slice` (each slice of the range prompted with the box); a one-slice prompt is
        followed until the object ends when `propagate`, else only its slice is segmented.
    min_slices: prompt-free volumes keep only 3-D components on at least this many slices.
    label_names: label value -> name, over the class names of `text` / `auto`; written as
        DICOM-SEG segment names, in a Slicer .seg.nrrd, and in an ITK-SNAP label file beside
        NIfTI / NRRD maps (`segmote.io.LabelInfo`).
    series: the SeriesInstanceUID to read from a DICOM folder holding several series.
    engine: what runs the frozen image encoder: "torch", "onnxruntime", "openvino" or "auto"
        (`segmote.engine`; its encoder runs in fp32 whatever `precision` is);
        threads: the CPU threads of
        PyTorch and the engine (None: OMP_NUM_THREADS, else every core).
    """

    backbone: str = "litemedsam"
    checkpoint: str | Path | None = None
    adapter: str | Path | None = "default"
    modality: str | None = None
    window: str | None = None
    axis: int = 2
    overlay: str | Path | None = None
    device: str = "cpu"
    progress: bool = False
    routing: bool = False
    attention: str | Path | None = None
    text: str | None = None
    auto: bool = False
    classes: Sequence[str] | None = None
    threshold: float | None = None
    batch_size: int | None = None
    every_slice: bool = False
    propagate: bool = False
    key_slice: int | None = None
    min_slices: int = 2
    label_names: Mapping[int, str] = field(default_factory=dict)
    series: str | None = None
    engine: str = "torch"
    precision: str | None = None
    threads: int | None = None


@dataclass
class PredictResult:
    """output: the label file written; label: the label map; summary: one line for the user;
    routing: with routing=True, one `segmote.routing.routing_table` row per decoded prompt plus
    "label" (the object's output label) and "slice" (volume slice index, None for 2-D);
    attention: the expert-attention PNG written, if asked for."""

    output: Path
    label: np.ndarray
    summary: str
    routing: list[dict] = field(default_factory=list)
    attention: Path | None = None
    classes: dict[int, str] = field(default_factory=dict)
    # automatic mode without named classes: the modality whose training classes were asked
    # (None: every class the adapter knows)
    auto_modality: str | None = None
    # automatic mode: the adapter has a class presence head (it drops classes the image cannot
    # hold, `segmote.modeling.presence`)
    auto_presence: bool = False
    # propagated volumes: per object, slice -> the model's predicted IoU of that slice's mask
    slice_scores: list[dict[int, float]] = field(default_factory=list)
