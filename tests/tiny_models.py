"""Tiny random SAM-style backbones (D = 32, 64 px input) for fast mechanics tests.

Imported by the test modules (pytest puts tests/ on sys.path); real-weight tests use the
`base_model` fixture of conftest.py instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.mask_decoder import MaskDecoder
from segmote.modeling.prompt_encoder import PromptEncoder
from segmote.modeling.sam import Sam
from segmote.modeling.transformer import TwoWayTransformer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Import into a test module to run it with one intra-op thread: its many small ops then
    avoid thread wake-up latency (which dominates on busy shared CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyEncoder(nn.Module):
    """64 px input -> (B, D, 4, 4) embedding and (B, 8, g, g) early features."""

    img_size, early_dim = 64, 8

    def __init__(self, dim: int, early_grid: int = 4) -> None:
        super().__init__()
        self.early = nn.Conv2d(3, self.early_dim, 64 // early_grid, 64 // early_grid)
        self.neck = nn.Conv2d(self.early_dim, dim, 1)
        self.bn = nn.BatchNorm2d(dim)  # like TinyViT: must stay in eval mode under SegMoTE

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        early = self.early(x)
        emb = nn.functional.adaptive_avg_pool2d(self.neck(early), 4)
        return EncoderOutput(self.bn(emb), early)


def tiny_sam(dim: int = 32, early_grid: int = 4, seed: int = 0) -> Sam:
    """A frozen, eval-mode Sam with random weights (seeded)."""
    torch.manual_seed(seed)
    dec = MaskDecoder(dim, TwoWayTransformer(2, dim, 4, 64), iou_head_hidden_dim=dim)
    sam = Sam(TinyEncoder(dim, early_grid), PromptEncoder(dim, (4, 4), (64, 64), 8), dec)
    return sam.requires_grad_(False).eval()
