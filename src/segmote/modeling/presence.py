"""Class presence head: may the class named by a text embedding be in this image at all?

Our addition, not the paper's. The automatic mode needs to leave a class out of an image where
it is absent. The selected expert token's predicted IoU (the confidence) cannot learn that for
classes of another kind of image: it is trained to score masks of classes that are there, and a
PPT decoder asked for a class it has never seen on this kind of image (nuclei on an MR slice)
still draws a confident blob. The presence head answers the question directly, from the frozen
image embedding and the class's frozen text embedding only, so training it touches no other
weight of the adapter: every prompted and prompt-free mask stays bit-identical, and only the
keep / drop decision of the automatic mode changes.

Shape, deliberately small: the image is summarised by the mean and the standard deviation over
its tokens of the (affine-free) layer-normed embedding, 2 D numbers that say what kind of image
it is; image summary and text embedding are projected to `rank` dimensions each, and the logit is
their scaled dot product plus a per-class bias from the text. With the handful of subjects a
medical dataset brings, a head with spatial attention over the tokens learned the training
images by heart (with one training case per dataset left out of its training, it called the
left-out nuclei quadrant nuclei-free and MR slices nuclei-positive); this one has 29 k weights
and a summary that is the same for any crop of the same tissue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def image_summary(image_embedding: Tensor) -> Tensor:
    """(B, D, h, w) -> (B, 2 D): mean and standard deviation over the tokens of the per-token
    layer-normed embedding (no learned affine, so it can be computed once per image)."""
    x = image_embedding.flatten(2).transpose(1, 2).float()
    x = F.layer_norm(x, (x.shape[-1],))
    return torch.cat([x.mean(1), x.std(1)], -1)


class PresenceHead(nn.Module):
    """(image summary, class text embedding) -> presence logit.

    Args:
        embed_dim: D, channels of the image embedding.
        text_dim: width of the text embeddings.
        rank: width of the shared space the two are projected to.
    """

    def __init__(self, embed_dim: int, text_dim: int, rank: int = 32) -> None:
        super().__init__()
        self.image = nn.Linear(2 * embed_dim, rank)
        self.text = nn.Linear(text_dim, rank)
        self.bias = nn.Linear(text_dim, 1)

    def forward(self, summary: Tensor, text: Tensor) -> Tensor:
        """summary: (1 or B, 2 D) `image_summary`; text: (B, text_dim). Returns (B,) logits
        (sigmoid: probability that the class may be in the image)."""
        img = self.image(summary.to(self.image.weight.dtype))
        txt = self.text(text.to(self.text.weight.dtype))
        return (img * txt).sum(-1) / img.shape[-1] ** 0.5 + self.bias(text.to(txt.dtype))[:, 0]
