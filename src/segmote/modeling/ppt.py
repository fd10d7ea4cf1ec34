"""Progressive prompt tokenization (PPT) and the text prompt, the adapter's prompt-side parts.

PPT (docs/method.md): Q learnable queries cross-attend (multi-head) over the layer-normed image
embedding plus a learned 2-D position term, then MLP + residual + LayerNorm give Q prompt tokens
that replace the manual sparse prompt tokens. Two optional foreground hints ("priors"): a mask
prompt's dense embedding is added to the image before the attention, and a text embedding is
added to every query. The paper limits PPT to binary tasks; conditioning the queries on the
class's text embedding is what lets one adapter segment each class it knows without a prompt.
Our choice (not the paper's): the tokens are an *anchor* plus a zero-initialised projection of
that output. The anchor is the frozen prompt encoder's embedding of a box around the whole frame
(padding tokens beyond two), so a fresh PPT module prompts the frozen decoder exactly like that
box, a prompt it understands, instead of with random vectors it was never trained on; learning
moves the tokens away from a working prompt, which takes far fewer steps than finding one.

Text prompt (docs/method.md): a frozen text encoder's sentence embedding (computed outside the
model: no I/O here) is projected to one extra sparse prompt token: SAM's padding token (what SAM appends
to a point-only prompt) plus a zero-initialised projection, so a fresh text module leaves a box /
point prompt as the decoder knows it. The same embedding, projected to the expert head's C
channels (+1), gives a spatial bias `(W e) . fused_image_features` plus a per-class constant
offset (our addition), added to every expert mask of prompt-free decoding (`SegMoTE.decode`
applies it there only). The bias projection starts at zero.
"""

from __future__ import annotations

from torch import Tensor, nn

from segmote.modeling.common import MLP


class TextPrompt(nn.Module):
    """Text embedding -> one sparse token and a per-prompt mask-bias vector.

    Args:
        text_dim: width of the text encoder's embedding (384 for all-MiniLM-L6-v2).
        embed_dim: decoder width D.
        head_dim: C, channels of the expert head's fused map.
    """

    def __init__(self, text_dim: int, embed_dim: int, head_dim: int) -> None:
        super().__init__()
        self.to_token = MLP(text_dim, embed_dim, embed_dim, 2)
        _zero(self.to_token.layers[-1])
        # C weights of the spatial bias + one constant logit offset per class (a class's masks
        # may need a global shift the feature dot product cannot give quickly)
        self.to_bias = nn.Linear(text_dim, head_dim + 1)
        _zero(self.to_bias)

    def forward(self, text: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        """text: (B, text_dim) unit-norm embeddings; pad: (1, D) the prompt encoder's padding
        token -> token (B, 1, D), bias vector (B, C + 1): C feature weights, then the offset."""
        return (pad + self.to_token(text)).unsqueeze(1), self.to_bias(text)


class PromptTokenizer(nn.Module):
    """PPT: Q queries -> Q prompt tokens from the image (and optional mask / text hints).

    Args:
        embed_dim: D.
        num_queries: Q (paper: 2).
        text_dim: width of text embeddings for the class condition, or None (binary PPT).
        num_heads: attention heads.
    """

    def __init__(self, embed_dim: int, num_queries: int = 2, text_dim: int | None = None,
                 num_heads: int = 8) -> None:
        super().__init__()
        self.queries = nn.Embedding(num_queries, embed_dim)  # N(0, 1) like SAM's tokens
        # the learned 2-D position term: a projection of the frozen Fourier grid encoding, so it
        # works at any embedding grid size (16 x 16 for LiteMedSAM, 64 x 64 for SAM)
        self.pos = nn.Linear(embed_dim, embed_dim)
        self.norm_image = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.norm_attn = nn.LayerNorm(embed_dim)
        self.mlp = MLP(embed_dim, 2 * embed_dim, embed_dim, 2)
        self.norm_out = nn.LayerNorm(embed_dim)
        self.text_to_query = nn.Linear(text_dim, embed_dim) if text_dim else None
        self.to_token = nn.Linear(embed_dim, embed_dim)
        _zero(self.to_token)  # a fresh module gives exactly the anchor (module doc)

    @property
    def num_queries(self) -> int:
        return self.queries.num_embeddings

    def forward(self, image_embedding: Tensor, dense_pe: Tensor, anchor: Tensor, batch: int,
                text: Tensor | None = None, mask_prior: Tensor | None = None) -> Tensor:
        """Prompt tokens for `batch` prompts.

        image_embedding: (1 or B, D, h, w); dense_pe: (1, D, h, w) SAM's grid encoding;
        anchor: (1, Q, D) the tokens of a fresh module (whole-frame box, module doc);
        text: (B, text_dim) class embeddings (ignored without `text_dim`); mask_prior: (B, D, h, w)
        dense embedding of a mask prompt. Returns (B, Q, D).
        """
        image = image_embedding if mask_prior is None else image_embedding + mask_prior
        keys = self.norm_image(image.flatten(2).transpose(1, 2))  # (1|B, hw, D)
        values = keys
        keys = keys + self.pos(dense_pe.flatten(2).transpose(1, 2))
        if keys.shape[0] != batch:
            keys, values = keys.expand(batch, -1, -1), values.expand(batch, -1, -1)
        q = self.queries.weight.unsqueeze(0).expand(batch, -1, -1)
        if text is not None and self.text_to_query is not None:
            q = q + self.text_to_query(text).unsqueeze(1)
        x = self.norm_attn(q + self.attn(q, keys, values, need_weights=False)[0])
        return anchor + self.to_token(self.norm_out(x + self.mlp(x)))


def _zero(layer: nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
