"""The value every image encoder returns (SAM ViT and TinyViT alike)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class EncoderOutput(NamedTuple):
    """Output of an image encoder.

    Attributes:
        image_embedding: (B, 256, H/16, W/16) neck output, the input of SAM's prompt/mask decoder
            (B, 256, 64, 64 for a 1024 x 1024 SAM input).
        early_features: (B, C_early, h, w) features from an early encoder stage, fused into the
            expert mask head (HQ-SAM style). SAM ViT: output of the first global-attention block,
            (B, embed_dim, H/16, W/16). TinyViT: an early stage, shape set by that encoder.
    """

    image_embedding: Tensor
    early_features: Tensor
