"""Training losses (docs/method.md, "Training recipe"): the released SegMoTE setup's

    total = 20 x focal(alpha 0.25, gamma 2) + Dice + MSE(predicted IoU, actual IoU)
            + 0.01 x load balance

Pure functions of tensors. Each per-mask loss returns one value per mask, (B,), computed in
float32 whatever the autocast dtype of the logits (bf16 sums over 65k pixels lose too much).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (released-setup values by default)."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    balance: float = 0.01

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _flat(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(B, ...) logits and 0/1 target -> (B, N) float32 each."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    return logits.float().flatten(1), target.float().flatten(1)


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al.), mean over pixels. (B, ...) -> (B,).

    FL = -alpha_t (1 - p_t)^gamma log(p_t), alpha_t = alpha on foreground, 1 - alpha on background.
    """
    x, t = _flat(logits, target)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # -log(p_t), stable
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (alpha_t * (1 - p_t) ** gamma * ce).mean(1)


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice of sigmoid(logits) with the target. (B, ...) -> (B,).

    smooth keeps the empty-target case finite (an empty prediction of an empty target -> 0).
    """
    x, t = _flat(logits, target)
    p = torch.sigmoid(x)
    inter = (p * t).sum(1)
    return 1 - (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)


def mask_iou(logits: Tensor, target: Tensor) -> Tensor:
    """IoU of the thresholded prediction (logits > 0) with the target; 1 when both are empty.
    (B, ...) -> (B,), no gradient (it is a regression target)."""
    x, t = _flat(logits.detach(), target)
    pred = x > 0
    gt = t > 0.5
    inter = (pred & gt).sum(1).float()
    union = (pred | gt).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_mse_loss(iou_pred: Tensor, logits: Tensor, target: Tensor) -> Tensor:
    """Squared error between the predicted IoU and the actual IoU of the thresholded mask.
    iou_pred: (B, 1) or (B,); logits, target: (B, 1, H, W) -> (B,)."""
    return (iou_pred.float().reshape(-1) - mask_iou(logits, target)) ** 2


def segmote_loss(out: Any, target: Tensor,
                 weights: LossWeights = LossWeights()) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted training loss of one decode call.

    out: a `SegMoTEOutput` (uses masks (B, 1, H, W) logits, iou_pred (B, 1), balance_loss scalar).
    target: (B, 1, H, W) 0/1. Returns the scalar total and the unweighted, detached parts
    {"focal", "dice", "iou", "balance"} (means over the batch).
    """
    parts = {
        "focal": focal_loss(out.masks, target).mean(),
        "dice": dice_loss(out.masks, target).mean(),
        "iou": iou_mse_loss(out.iou_pred, out.masks, target).mean(),
        "balance": out.balance_loss.float(),
    }
    total = sum(getattr(weights, name) * value for name, value in parts.items())
    return total, {name: value.detach() for name, value in parts.items()}
