"""SAM's ViT image encoder (ViT-B/L/H; MedSAM is ViT-B), with the official parameter names.

The module tree mirrors the ``image_encoder.*`` keys of Meta's SAM and MedSAM checkpoints, so their
encoder weights load with ``load_state_dict(strict=True)`` once the prefix is stripped:

    patch_embed.proj            Conv 16x16 / stride 16, 3 -> C
    pos_embed                   (1, 64, 64, C) absolute position table (64 = 1024 / 16)
    blocks.{i}.norm1 / norm2    LayerNorm(C, eps=1e-6)
    blocks.{i}.attn.qkv / proj  fused qkv Linear(C, 3C) and output Linear(C, C)
    blocks.{i}.attn.rel_pos_h/w (2 * size - 1, head_dim); size = 14 (window) or 64 (global block)
    blocks.{i}.mlp.lin1 / lin2  Linear(C, 4C) -> GELU -> Linear(4C, C)
    neck.0..3                   Conv1x1 C->256, LayerNorm2d, Conv3x3, LayerNorm2d (convs: no bias)

Tokens are kept channels-last, (B, H, W, C), between blocks, as in SAM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segmote.errors import ConfigError
from segmote.modeling.common import LayerNorm2d
from segmote.modeling.encoder_output import EncoderOutput

VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, in_chans, H, W) -> (B, H/p, W/p, embed_dim)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """Transformer feed-forward: Linear -> GELU -> Linear, on (..., dim)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.lin2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position embeddings for every (query, key) coordinate pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, head_dim) table, one row per relative offset; L = 2 * size - 1 at build time.

    Returns:
        (q_size, k_size, head_dim); row [i, j] belongs to offset i - j (scaled when sizes differ).
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if table.shape[0] != max_rel_dist:
        # Weights used at another grid than they were trained on (e.g. 1024-input weights fed
        # 512 inputs): stretch the table linearly so each offset keeps its relative meaning.
        table = F.interpolate(table.T[None], size=max_rel_dist, mode="linear")[0].T
    # When q and k differ in length, put both on the finer grid before taking offsets.
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    offsets = (q_coords - k_coords) + (k_size - 1) * k_scale  # shifted to start at 0
    return table[offsets.long()]


def decomposed_rel_pos_bias(
    q: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> Tensor:
    """Additive attention bias of SAM's decomposed relative positions (MViTv2 style).

    bias[(qy, qx), (ky, kx)] = q . R_h[qy, ky] + q . R_w[qx, kx], computed as two small einsums
    instead of a full (q_h*q_w, k_h*k_w, head_dim) table.

    Args:
        q: (..., q_h * q_w, head_dim) *unscaled* queries (SAM adds the bias to the scaled logits
            but projects the unscaled q).
        rel_pos_h, rel_pos_w: (L_h, head_dim), (L_w, head_dim) tables.
        q_size, k_size: (h, w) token grids of queries and keys.

    Returns:
        (..., q_h * q_w, k_h * k_w) bias.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h)  # (q_h, k_h, d)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w)  # (q_w, k_w, d)
    grid_q = q.reshape(*q.shape[:-2], q_h, q_w, q.shape[-1])
    rel_h = torch.einsum("...hwd,hkd->...hwk", grid_q, r_h)  # (..., q_h, q_w, k_h)
    rel_w = torch.einsum("...hwd,wkd->...hwk", grid_q, r_w)  # (..., q_h, q_w, k_w)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (..., q_h, q_w, k_h, k_w)
    return bias.reshape(*q.shape[:-2], q_h * q_w, k_h * k_w)


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float
) -> Tensor:
    """softmax(q k^T * scale + bias) v, written out; the reference for the SDPA path.

    Args:
        q, k, v: (B, heads, N, head_dim).
        bias: (B, heads, N, N) or None.

    Returns:
        (B, heads, N, head_dim).
    """
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and decomposed rel-pos bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            dim: token width C.
            num_heads: attention heads; C must divide evenly.
            qkv_bias: bias on the fused qkv projection.
            use_rel_pos: add the decomposed relative-position bias.
            input_size: (h, w) token grid the rel-pos tables are sized for (required with rel pos).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))
        # Plain attribute, not a buffer: it must not appear in the state dict. False selects the
        # explicit formulation (tests, debugging).
        self.use_sdpa = True

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C); every token attends to every token of its (B) item."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            bias = bias.to(q.dtype)
        if self.use_sdpa:
            # A float attn_mask is added to the scaled logits before softmax: the same maths as
            # explicit_attention, without keeping the softmax matrix around for the output.
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            out = explicit_attention(q, k, v, bias, self.scale)
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad to a multiple of the window and cut into non-overlapping windows.

    Args:
        x: (B, H, W, C).

    Returns:
        windows (B * num_windows, window_size, window_size, C) and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        # Padding tokens are zeros after norm1; SAM does not mask them, so neither do we.
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of ``window_partition``: (B * nW, ws, ws, C) -> (B, H, W, C), padding cropped."""
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class Block(nn.Module):
    """Pre-norm transformer block with windowed (window_size > 0) or global (0) attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            dim, num_heads, mlp_ratio, qkv_bias, use_rel_pos: as in ``ImageEncoderViT``.
            window_size: side of the attention windows; 0 means global attention.
            input_size: (h, w) token grid of the image; sizes the global rel-pos tables.
        """
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder: (B, 3, S, S) image -> 256-channel embedding on an S/16 grid."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        early_block: int | None = None,
    ) -> None:
        """
        Args:
            img_size: input side S the position tables are sized for (1024 for SAM and MedSAM).
            patch_size: patch side; the token grid is S / patch_size.
            in_chans: input channels.
            embed_dim, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP ratio.
            out_chans: channels of the neck output (the decoder width, 256).
            qkv_bias: bias on the fused qkv projections.
            use_rel_pos: decomposed relative-position bias in every attention.
            window_size: window side of the non-global blocks.
            global_attn_indexes: blocks that attend over the whole grid.
            early_block: block whose output is returned as ``early_features``; default the first
                global block (HQ-SAM's choice).
        """
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if early_block is None:
            if not global_attn_indexes:
                raise ValueError("early_block must be given when there are no global blocks")
            early_block = global_attn_indexes[0]
        if not 0 <= early_block < depth:
            raise ValueError(f"early_block {early_block} is outside 0..{depth - 1}")
        grid = img_size // patch_size
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.out_chans = out_chans
        self.early_block = early_block
        self.early_dim = embed_dim
        self.global_attn_indexes = tuple(global_attn_indexes)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # Zero-initialised as in SAM; real values always come from a checkpoint.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in self.global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def _pos_embed_for(self, h: int, w: int) -> Tensor:
        """Absolute position table for an (h, w) token grid: (1, h, w, C)."""
        pos = self.pos_embed
        if pos.shape[1:3] != (h, w):
            # Another input size than img_size: resample the table bilinearly, the 2-D analogue
            # of what get_rel_pos does for the relative tables.
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
            pos = pos.permute(0, 2, 3, 1)
        return pos

    def forward(self, x: Tensor) -> EncoderOutput:
        """
        Args:
            x: (B, in_chans, img_size, img_size) normalised, padded image. Other sides that are
                multiples of patch_size also run (position tables are interpolated).

        Returns:
            EncoderOutput(image_embedding (B, out_chans, S/16, S/16),
                          early_features (B, embed_dim, S/16, S/16)).
        """
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            size = tuple(x.shape[-2:])
            raise ValueError(f"input size {size} is not a multiple of patch_size {self.patch_size}")
        x = self.patch_embed(x)  # (B, h, w, C)
        x = x + self._pos_embed_for(x.shape[1], x.shape[2])
        early = x
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == self.early_block:
                early = x
        embedding = self.neck(x.permute(0, 3, 1, 2))
        return EncoderOutput(image_embedding=embedding, early_features=early.permute(0, 3, 1, 2))


def build_vit_encoder(variant: str, img_size: int = 1024) -> ImageEncoderViT:
    """SAM ViT encoder for ``variant`` in ``VIT_VARIANTS`` (MedSAM uses "vit_b")."""
    try:
        config = VIT_VARIANTS[variant]
    except KeyError:
        choices = ", ".join(VIT_VARIANTS)
        raise ConfigError(f"unknown ViT variant {variant!r}; choose one of: {choices}") from None
    return ImageEncoderViT(img_size=img_size, **config)
