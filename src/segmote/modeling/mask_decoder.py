"""SAM mask decoder: two-way transformer over [iou | mask tokens | prompt tokens] + image tokens,
then hypernetwork MLPs turn each mask token into a mask over upscaled image features.

Written from the SAM paper (App. A). Parameter names match SAM checkpoints.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segmote.modeling.common import MLP, LayerNorm2d
from segmote.modeling.transformer import TwoWayTransformer


class DecoderOutput(NamedTuple):
    """masks: (B, M, 4h, 4w) low-res logits; iou_pred: (B, M)."""

    masks: Tensor
    iou_pred: Tensor


def expand_image(x: Tensor, batch: int) -> Tensor:
    """Broadcast one image's (1, C, h, w) tensor over `batch` prompts (a view, no copy)."""
    return x.expand(batch, -1, -1, -1) if x.shape[0] == 1 and batch != 1 else x


class MaskDecoder(nn.Module):
    """SAM mask decoder.

    Args:
        transformer_dim: decoder width D (256 for SAM, MedSAM and LiteMedSAM).
        transformer: the two-way transformer.
        num_multimask_outputs: 3 in SAM; plus one single-mask token.
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer,
                 num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer_dim = d
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, 2, 2), LayerNorm2d(d // 4), nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, 2, 2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(d, iou_head_hidden_dim, self.num_mask_tokens,
                                       iou_head_depth)

    def output_tokens(self) -> Tensor:
        """The learned [iou | mask x 4] tokens, (5, D)."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def masks_from_tokens(self, mask_tokens: Tensor, image_tokens: Tensor,
                          grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """mask_tokens (B, 4, D), image tokens (B, h*w, D) -> masks (B, 4, 4h, 4w), upscaled
        features (B, D/8, 4h, 4w)."""
        b, _, d = image_tokens.shape
        src = image_tokens.transpose(1, 2).reshape(b, d, *grid)
        upscaled = self.output_upscaling(src)
        hyper = torch.stack([mlp(mask_tokens[:, i])
                             for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[-2:])
        return masks, upscaled

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor,
                      sparse_prompt_embeddings: Tensor,
                      dense_prompt_embeddings: Tensor) -> DecoderOutput:
        """All mask tokens' outputs.

        image_embeddings: (1 or B, D, h, w); image_pe: (1, D, h, w);
        sparse: (B, N, D); dense: (B, D, h, w). Returns masks (B, 4, 4h, 4w), iou (B, 4).
        """
        b = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.output_tokens().unsqueeze(0).expand(b, -1, -1),
                            sparse_prompt_embeddings], dim=1)
        src = expand_image(image_embeddings, b) + dense_prompt_embeddings
        pos = expand_image(image_pe, b)
        hs, keys = self.transformer(src, pos, tokens)
        masks, _ = self.masks_from_tokens(hs[:, 1:1 + self.num_mask_tokens], keys,
                                          tuple(src.shape[-2:]))
        return DecoderOutput(masks, self.iou_prediction_head(hs[:, 0]))

    def forward(self, image_embeddings: Tensor, image_pe: Tensor,
                sparse_prompt_embeddings: Tensor, dense_prompt_embeddings: Tensor,
                multimask_output: bool = False) -> DecoderOutput:
        """SAM's interface: the single-mask token (M = 1) or the three multimask tokens (M = 3)."""
        out = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                 dense_prompt_embeddings)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return DecoderOutput(out.masks[:, sel], out.iou_pred[:, sel])


def upscale_logits(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of logits (B, M, h, w) to size."""
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
