"""The JSON manifest that travels with exported graphs: one typed schema, read in one place.

Written by `segmote export` next to its graphs and by the graph cache next to each cached graph.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segmote.errors import InputError


@dataclass(frozen=True)
class GraphInfo:
    """One graph file: its sha256 and its inputs / outputs as name -> shape ("B" is dynamic)."""

    file: str
    sha256: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    max_abs_diff: float | None = None  # largest |graph - PyTorch| over the check's outputs
    mask_pixels_differing: int | None = None  # low-res mask pixels (logit > 0) that differ
    checked_on: list[str] = field(default_factory=list)  # inputs of the check


@dataclass(frozen=True)
class Manifest:
    """What a consumer needs to run the graphs and to know whether they are current.

    Attributes:
        format: `graphs.EXPORT_FORMAT` at export time (a cache entry of another format is stale).
        backbone, backbone_sha256: the frozen base model's name and weights hash.
        adapter_sha256: hash of the adapter file (None: base model / encoder only).
        preprocessing: how an image becomes the encoder input (resize, pad, normalisation).
        graphs: graph name ("encoder", "decoder", ...) -> GraphInfo.
        adapter: calibration metadata of the adapter (class names, thresholds), if any.
    """

    format: int
    opset: int
    backbone: str
    backbone_sha256: str
    adapter_sha256: str | None
    img_size: int
    preprocessing: dict[str, Any]
    graphs: dict[str, GraphInfo]
    segmote_version: str
    torch_version: str
    adapter: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Parse `path`; a missing, unreadable or foreign file is one InputError line."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            graphs = {k: GraphInfo(**v) for k, v in raw.pop("graphs").items()}
            return cls(graphs=graphs, **raw)
        except FileNotFoundError:
            raise InputError(f"{path}: manifest not found") from None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise InputError(f"{path}: not a segmote graph manifest ({err})") from None


def preprocessing(img_size: int, pixel_mean: list[float], pixel_std: list[float]) -> dict:
    """The encoder input recipe, as `segmote.transforms` implements it, for deployment code."""
    return {
        "input": f"(B, 3, {img_size}, {img_size}) float32, values in [0, 1] before "
                 "normalisation",
        "intensity": "CT: window in HU (lung -1000..400 by default), MR: clip to the slice's "
                     "0.5..99.5 percentiles, other: unchanged (segmote.transforms)",
        "resize": f"longest side to {img_size}, plain bilinear without antialiasing",
        "scale": "min-max to [0, 1] per slice, grey repeated to 3 channels, zero padding at "
                 "the bottom and right to a square",
        "normalise": "(x - pixel_mean) / pixel_std per channel, applied before the encoder graph",
        "pixel_mean": pixel_mean, "pixel_std": pixel_std,
        "prompts": "coordinates in padded-input pixels: original pixel times "
                   f"{img_size} / longest side",
        "masks": "masks / base_masks are low-res logits (B, 1, 4h, 4w) over the padded input: "
                 "crop the valid part, resize to the image, threshold at 0",
    }
