"""Expert mask head: one hypernetwork per expert token over a fused high-resolution feature map.

The fused map (docs/method.md, "Expert mask head") at the low-res mask grid (4h, 4w), C channels:

    fused = feature_conv(decoder upscaled features)          per prompt
          + up4(image embedding) + up4(early encoder features)   per image (cached)

The per-image part is computed once by `ImageFusion` (`SegMoTE.prepare_image`) and reused by every
prompt. The per-prompt conv block is a bottleneck, C -> C/4 (1x1) -> 3x3 -> GELU -> C (1x1): spatial
and non-linear, yet ~4 % of the base decoder's time. (A full 3x3 C -> C conv + GELU costs ~17 %,
HQ-SAM's 32 -> 64 -> 32 two-conv block with a LayerNorm ~35 %: beyond the 1.25x decode budget.)
The block's last 1x1 is linear and sits right before the dot product, so it is applied to the
hypernet vectors instead of the map (`h . (P g + p) = (P^T h) . g + h . p`): the same function,
without ever materialising the C-channel map per prompt.

Zero-shot preserved by construction: each expert mask is a *residual* on SAM's single-mask logits,

    expert_mask_t = base_mask + hypernet_t(expert_token_t) . fused

and the last layer of every hypernet (and of the IoU correction) starts at zero, so a fresh head
returns exactly the base mask and IoU (see docs/mote.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segmote.modeling.common import MLP, LayerNorm2d


def _zero_last_layer(mlp: MLP) -> MLP:
    nn.init.zeros_(mlp.layers[-1].weight)
    nn.init.zeros_(mlp.layers[-1].bias)
    return mlp


class TokenHypernets(nn.Module):
    """T independent MLPs (one per expert token), evaluated together with one batched matmul per
    layer. Each is SAM's hypernetwork shape: `num_layers` Linear layers with ReLU between.

    weights[i]: (T, in, out), biases[i]: (T, out); every layer is initialised like nn.Linear,
    the last one to zero (the residual starts at 0).
    """

    def __init__(self, num_tokens: int, input_dim: int, hidden_dim: int, output_dim: int,
                 num_layers: int = 3) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            bound = 1.0 / math.sqrt(d_in) if i < num_layers - 1 else 0.0
            self.weights.append(nn.Parameter(torch.empty(num_tokens, d_in, d_out)
                                             .uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_tokens, d_out).uniform_(-bound, bound)))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (B, T, in) -> (B, T, out); token t goes through MLP t."""
        x = tokens.transpose(0, 1)  # T, B, in
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b.unsqueeze(1), x, w)
            if i < last:
                x = F.relu(x)
        return x.transpose(0, 1)


def _upsample4(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """x4 learned upsampling, the same shape as SAM's `output_upscaling`."""
    return nn.Sequential(nn.ConvTranspose2d(in_dim, hidden, 2, 2), LayerNorm2d(hidden), nn.GELU(),
                         nn.ConvTranspose2d(hidden, out_dim, 2, 2))


class ImageFusion(nn.Module):
    """Prompt-independent part of the fused map.

    Args:
        embed_dim: D, channels of the image embedding.
        early_dim: channels of `EncoderOutput.early_features`.
        head_dim: C, channels of the fused map (= SAM's upscaled features, D / 8).
    """

    def __init__(self, embed_dim: int, early_dim: int, head_dim: int) -> None:
        super().__init__()
        self.embedding_up = _upsample4(embed_dim, embed_dim // 4, head_dim)
        self.early_up = _upsample4(early_dim, embed_dim // 4, head_dim)

    def forward(self, image_embedding: Tensor, early_features: Tensor) -> Tensor:
        """(B, D, h, w) embedding and (B, C_early, h', w') early features -> (B, C, 4h, 4w)."""
        fused = self.embedding_up(image_embedding)
        early = self.early_up(early_features)
        if early.shape[-2:] != fused.shape[-2:]:  # an encoder whose early grid differs
            early = F.interpolate(early, size=fused.shape[-2:], mode="bilinear",
                                  align_corners=False)
        return fused + early


class ExpertMaskHead(nn.Module):
    """T hypernetwork MLPs (3 layers, D -> D -> D -> C) and an IoU correction.

    Args:
        embed_dim: D.
        early_dim: channels of the early encoder features.
        num_tokens: T expert tokens.
        head_dim: C (default D / 8, SAM's upscaled-feature width).
    SAM's upscaled features have D / 8 channels (`MaskDecoder.output_upscaling`).
    """

    def __init__(self, embed_dim: int, early_dim: int, num_tokens: int,
                 head_dim: int | None = None) -> None:
        super().__init__()
        c = head_dim or embed_dim // 8
        self.fusion = ImageFusion(embed_dim, early_dim, c)
        mid = max(c // 4, 1)
        self.feature_conv = nn.Sequential(nn.Conv2d(embed_dim // 8, mid, 1),
                                          nn.Conv2d(mid, mid, 3, padding=1), nn.GELU())
        self.feature_proj = nn.Linear(mid, c)  # the block's closing 1x1 conv (applied folded)
        self.hypernets = TokenHypernets(num_tokens, embed_dim, embed_dim, c, 3)
        self.iou_delta = _zero_last_layer(MLP(embed_dim, embed_dim // 4, 1, 3))

    def image_features(self, image_embedding: Tensor, early_features: Tensor) -> Tensor:
        """Per-image cache: (B, C, 4h, 4w)."""
        return self.fusion(image_embedding, early_features)

    def forward(self, tokens: Tensor, upscaled: Tensor, image_features: Tensor,
                base_mask: Tensor, base_iou: Tensor) -> tuple[Tensor, Tensor]:
        """Expert masks and IoU predictions.

        tokens: (B, T, D) expert tokens after the decoder; upscaled: (B, C, 4h, 4w) SAM's
        upscaled features; image_features: (1 or B, C, 4h, 4w) from `image_features`;
        base_mask: (B, 1, 4h, 4w) SAM's single-mask logits; base_iou: (B, 1).
        Returns masks (B, T, 4h, 4w) and iou (B, T).
        """
        b, t, _ = tokens.shape
        hyper = self.hypernets(tokens)  # B, T, C
        c = hyper.shape[-1]
        # hyper . feature_proj(g) == (hyper @ W) . g + hyper . bias   (W: C x mid)
        feat = self.feature_conv(upscaled).flatten(2)  # B, mid, HW
        delta = (hyper @ self.feature_proj.weight) @ feat
        delta = delta + (hyper @ self.feature_proj.bias).unsqueeze(-1)
        cached = image_features.flatten(2)
        if image_features.shape[0] == 1 and b > 1:  # one image, B prompts: one matmul, no copy
            delta = delta + (hyper.reshape(1, b * t, c) @ cached).view(b, t, -1)
        else:
            delta = delta + hyper @ cached
        masks = base_mask + delta.view(b, t, *upscaled.shape[-2:])
        return masks, base_iou + self.iou_delta(tokens).squeeze(-1)

    def text_bias(self, vector: Tensor, image_features: Tensor) -> Tensor:
        """Spatial text bias: vector (B, C) . image_features (1 or B, C, 4h, 4w) ->
        (B, 1, 4h, 4w), added to every expert mask (docs/method.md, text prompts)."""
        b, c = vector.shape
        g = image_features.flatten(2)  # (1|B, C, HW)
        if g.shape[0] == 1 and b > 1:
            bias = vector @ g[0]  # (B, HW): one matmul, no copy of the map
        else:
            bias = (vector.unsqueeze(1) @ g).squeeze(1)
        return bias.view(b, 1, *image_features.shape[-2:])

    def fused_map(self, upscaled: Tensor, image_features: Tensor) -> Tensor:
        """The fused map itself, (B, C, 4h, 4w), for inspection and tests (`forward` never builds
        it: it folds the closing 1x1 conv into the hypernet vectors)."""
        g = self.feature_conv(upscaled).permute(0, 2, 3, 1)  # B, 4h, 4w, mid
        return self.feature_proj(g).permute(0, 3, 1, 2) + image_features
