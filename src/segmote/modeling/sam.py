"""The Segment-Anything-style model: image encoder + prompt encoder + mask decoder.

Parts are built outside and passed in (see `segmote.build`). No file I/O here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segmote.modeling.common import weights_dtype_outside_autocast
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
    def mask_input_size(self) -> int:
        """Side of the low-res mask grid (4 x the embedding grid: 256 for all SAM backbones)."""
        return self.prompt_encoder.mask_input_size[0]

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def encode(self, images: Tensor) -> EncoderOutput:
        """images: (B, 3, S, S) in [0, 1], zero-padded -> EncoderOutput."""
        return self.image_encoder((images - self.pixel_mean) / self.pixel_std)

    def prepare_image(self, encoded: EncoderOutput) -> EncoderOutput:
        """Everything per image that prompts reuse. The base decoder needs only the embedding;
        SegMoTE overrides this to also cache its prompt-independent expert-head features."""
        return encoded

    def decode(self, image: EncoderOutput | Tensor, points: tuple[Tensor, Tensor] | None = None,
               boxes: Tensor | None = None, masks: Tensor | None = None,
               multimask_output: bool = False) -> DecoderOutput:
        """Decode B prompts against one image (batch 1) or B images.

        image: `prepare_image` output or an image embedding (1 or B, D, h, w).
        points: coords (B, N, 2) and labels (B, N) (1 positive, 0 negative);
        boxes: (B, 4) x0, y0, x1, y1; masks: (B, 1, 4h, 4w) logits — all in padded-input pixels.
        Returns masks (B, M, 4h, 4w) logits and iou_pred (B, M).
        """
        emb = image.image_embedding if isinstance(image, EncoderOutput) else image
        emb = weights_dtype_outside_autocast(emb, self.mask_decoder.iou_token.weight)
        sparse, dense = self.prompt_encoder(points, boxes, masks)
        return self.mask_decoder(emb, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                 multimask_output)
