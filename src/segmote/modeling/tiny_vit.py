"""TinyViT image encoder as used by LiteMedSAM (256 x 256 input, 64 x 64 x 256 embedding).

Written from the TinyViT paper (Wu et al., ECCV 2022) and the layout of the LiteMedSAM weights:
a stride-1 patch embedding (two 1x1 conv-BN with GELU between), stage 0 of MBConv blocks at full
input resolution, stages 1-3 of windowed self-attention blocks with a learned bias per relative
offset and a depthwise "local" conv, and a SAM-style neck. Parameter names follow the checkpoint
(`image_encoder.layers.{i}.blocks.{j}...`) so the file loads strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segmote.modeling.common import LayerNorm2d
from segmote.modeling.encoder_output import EncoderOutput


class Conv2dBN(nn.Sequential):
    """Conv (no bias) followed by BatchNorm; keys `c.*` and `bn.*` as in the checkpoint."""

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """(B, 3, S, S) -> (B, C0, S, S): LiteMedSAM keeps full resolution (1x1 convs, stride 1)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_chans, embed_dim // 2), nn.GELU(),
                                 Conv2dBN(embed_dim // 2, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Token map (B, H*W, C) -> (B, H'*W', C_out); stride 2, or 1 for the last LiteMedSAM stage."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:  # tokens -> map
            b, _, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head attention inside a ws x ws window with a learned bias per |relative offset|.

    The checkpoint stores `attention_biases` (heads, ws*ws): one value per offset (|dy|, |dx|),
    indexed dy * ws + dx.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        idx = (ys[:, None] - ys[None]).abs() * window + (xs[:, None] - xs[None]).abs()
        self.register_buffer("bias_idx", idx, persistent=False)  # (N, N)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B_windows, N = ws*ws, C) -> same shape."""
        b, n, _ = x.shape
        x = self.norm(x)
        # The checkpoint's qkv packs (q, k, v) per head: (B, N, heads, 3 * head_dim).
        q, k, v = self.qkv(x).view(b, n, self.num_heads, 3 * self.head_dim).permute(
            0, 2, 1, 3).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.bias_idx].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TokenMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded to whole windows) + depthwise local conv + MLP."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int,
                 mlp_ratio: float, local_conv: int) -> None:
        super().__init__()
        self.resolution, self.window = resolution, window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = Conv2dBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)
        self.mlp = TokenMLP(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        h = w = self.resolution
        ws = self.window
        if h == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad = (ws - h % ws) % ws
        if pad:  # padded positions are zeros *before* the attention's LayerNorm, as trained
            x = F.pad(x, (0, 0, 0, pad, 0, pad))
        hp = h + pad
        nw = hp // ws
        x = x.view(b, nw, ws, nw, ws, c).transpose(2, 3).reshape(b * nw * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nw, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, hp, c)
        return x[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H*W, C) tokens -> same shape."""
        b, n, c = x.shape
        x = x + self._windowed_attention(x)
        x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.local_conv(x).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, depth: int, resolution: int, expand: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    def __init__(self, dim: int, out_dim: int | None, depth: int, resolution: int, heads: int,
                 window: int, mlp_ratio: float, local_conv: int, down_stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, heads, window, mlp_ratio, local_conv)
            for _ in range(depth))
        self.downsample = (PatchMerging(resolution, dim, out_dim, down_stride)
                           if out_dim is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """LiteMedSAM image encoder: (B, 3, 256, 256) in [0, 1] -> EncoderOutput.

    image_embedding: (B, 256, 64, 64). early_features: output of stage 1, (B, 160, 64, 64) —
    the earliest stage already at the embedding's grid, used by the expert mask head.
    """

    def __init__(self, img_size: int = 256, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand: float = 4.0, local_conv: int = 3, out_chans: int = 256) -> None:
        super().__init__()
        self.img_size, self.out_chans, self.early_dim = img_size, out_chans, embed_dims[2]
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        res = [img_size, img_size // 2, img_size // 4, img_size // 4]
        layers: list[nn.Module] = [ConvStage(embed_dims[0], embed_dims[1], depths[0], res[0],
                                             mbconv_expand)]
        for i in range(1, 4):
            out_dim = embed_dims[i + 1] if i < 3 else None
            stride = 1 if i == 2 else 2  # the last merge keeps the 64 x 64 grid
            layers.append(AttentionStage(embed_dims[i], out_dim, depths[i], res[i], num_heads[i],
                                         window_sizes[i], mlp_ratio, local_conv, stride))
        self.layers = nn.ModuleList(layers)
        self.embed_grid = res[3]
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[3], out_chans, 1, bias=False), LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans))

    def forward(self, x: Tensor) -> EncoderOutput:
        g = self.embed_grid
        x = self.layers[0](self.patch_embed(x))
        x = self.layers[1](x)  # (B, 64*64, 160) after stage 1's merge
        early = x.transpose(1, 2).reshape(x.shape[0], -1, g, g)
        x = self.layers[3](self.layers[2](x))
        x = x.transpose(1, 2).reshape(x.shape[0], -1, g, g)
        return EncoderOutput(self.neck(x), early)
