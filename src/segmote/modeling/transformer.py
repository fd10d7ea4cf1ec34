"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Written from the SAM paper (App. A, Fig. 14). Each block: token self-attention, token-to-image
cross-attention, token MLP, image-to-token cross-attention. `TwoWayAttentionBlock` exposes the
token MLP step as a separate method so SegMoTE can route the expert tokens through MoTE instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the inner width."""

    def __init__(self, embed_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embed_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, self.internal_dim)
        self.k_proj = nn.Linear(embed_dim, self.internal_dim)
        self.v_proj = nn.Linear(embed_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embed_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """q: (B, Nq, D), k and v: (B, Nk, D) -> (B, Nq, D).

        attn_mask: additive or boolean mask broadcastable to (B, heads, Nq, Nk).
        return_weights: also return the head-averaged attention (B, Nq, Nk) (for routing maps).
        """
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        if return_weights:
            logits = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            elif attn_mask is not None:
                logits = logits + attn_mask
            weights = logits.softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, h, n, c = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))
        return (out, weights.mean(1)) if return_weights else out


class MLPBlock(nn.Module):
    def __init__(self, embed_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embed_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """One block of the two-way transformer, split into its four steps."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int = 2048,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn_token_to_image = Attention(embed_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = MLPBlock(embed_dim, mlp_dim)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.norm4 = nn.LayerNorm(embed_dim)
        self.cross_attn_image_to_token = Attention(embed_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def attend(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
               token_mask: Tensor | None = None) -> Tensor:
        """Self-attention then token-to-image attention on the tokens. (B, N, D) -> (B, N, D).

        token_mask: (N, N) boolean, True where token i may attend to token j.
        """
        if self.skip_first_layer_pe:  # first block: the tokens *are* their positional encoding
            queries = self.self_attn(queries, queries, queries, attn_mask=token_mask)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, attn_mask=token_mask)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = queries + self.cross_attn_token_to_image(q, k, keys)
        return self.norm2(queries)

    def token_mlp(self, queries: Tensor) -> Tensor:
        return self.norm3(queries + self.mlp(queries))

    def update_image(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
                     key_mask: Tensor | None = None) -> Tensor:
        """Image-to-token attention; returns the new image tokens (B, HW, D).

        key_mask: (N,) boolean, True for tokens the image may attend to.
        """
        q, k = queries + query_pe, keys + key_pe
        mask = key_mask[None, None, None, :] if key_mask is not None else None
        keys = keys + self.cross_attn_image_to_token(k, q, queries, attn_mask=mask)
        return self.norm4(keys)

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor,
                key_pe: Tensor) -> tuple[Tensor, Tensor]:
        queries = self.token_mlp(self.attend(queries, keys, query_pe, key_pe))
        return queries, self.update_image(queries, keys, query_pe, key_pe)


class TwoWayTransformer(nn.Module):
    """depth blocks + a final token-to-image attention. Works on flattened image tokens."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def final_attend(self, queries: Tensor, keys: Tensor, query_pe: Tensor,
                     key_pe: Tensor) -> Tensor:
        q, k = queries + query_pe, keys + key_pe
        return self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))

    def forward(self, image_embedding: Tensor, image_pe: Tensor,
                point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """image_embedding, image_pe: (B, D, h, w); point_embedding: (B, N, D).

        Returns tokens (B, N, D) and image tokens (B, h*w, D).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        return self.final_attend(queries, keys, point_embedding, key_pe), keys
