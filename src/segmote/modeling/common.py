"""Small building blocks shared by the encoder and decoder modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def weights_dtype_outside_autocast(x: Tensor, weight: Tensor) -> Tensor:
    """x cast to the weight's dtype unless autocast is on for x's device.

    Image features cached under autocast are bf16 / fp16; decoded later outside autocast they
    would meet fp32 weights in a matmul (issue 22). Under autocast x is left as it is: autocast
    casts it per op."""
    if x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
        return x
    return x.to(weight.dtype)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (SAM's neck and decoder use it)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (SAM's hypernetwork and IoU heads).

    Parameter names (`layers.{i}.weight`) match SAM checkpoints.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
