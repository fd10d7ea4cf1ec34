"""The Segment-Anything-style model: image encoder + prompt encoder + mask decoder.

Parts are built outside and passed in (see `segmote.build`). No file I/O here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.mask_decoder import DecoderOutput, MaskDecoder
from segmote.modeling.prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Frozen base model.

    Args:
        image_encoder: maps (B, 3, S, S) normalised images to EncoderOutput.
        pixel_mean, pixel_std: per-channel normalisation applied to [0, 1] inputs
            (SAM: ImageNet statistics; MedSAM / LiteMedSAM: mean 0, std 1).
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, pixel_mean: tuple[float, float, float] = (0., 0., 0.),
                 pixel_std: tuple[float, float, float] = (1., 1., 1.)) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def embed_dim(self) -> int:
        return self.mask_decoder.transformer_dim

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def encode(self, images: Tensor) -> EncoderOutput:
        """images: (B, 3, S, S) in [0, 1], zero-padded -> EncoderOutput."""
        return self.image_encoder((images - self.pixel_mean) / self.pixel_std)

    def decode(self, image_embeddings: Tensor, points: tuple[Tensor, Tensor] | None = None,
               boxes: Tensor | None = None, masks: Tensor | None = None,
               multimask_output: bool = False) -> DecoderOutput:
        """Prompts in padded-input pixel coordinates; see PromptEncoder.forward for shapes."""
        sparse, dense = self.prompt_encoder(points, boxes, masks)
        return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse,
                                 dense, multimask_output)
