"""Loss terms on hand-checkable cases."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from segmote.training.losses import (LossWeights, dice_loss, focal_loss, iou_mse_loss,
                                     mask_iou, segmote_loss)

BIG = 30.0  # a logit whose sigmoid is 1 to float precision


def test_dice_loss_hand_computed():
    # prediction covers 2 pixels, target 3 (overlap 2): soft Dice (2*2+1)/(2+3+1) = 5/6
    logits = torch.tensor([[[BIG, BIG], [-BIG, -BIG]]])
    target = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    assert torch.allclose(dice_loss(logits, target), torch.tensor([1 - 5 / 6]), atol=1e-6)
    assert dice_loss(target * 2 * BIG - BIG, target).item() < 1e-6  # perfect -> ~0
    empty = torch.zeros(1, 2, 2)
    assert dice_loss(empty - BIG, empty).item() < 1e-6  # both empty -> 0, not NaN


def test_focal_loss_hand_computed():
    # one pixel, logit 0 (p = 0.5): foreground alpha 0.25 * 0.5^2 * ln 2, background 0.75 * ...
    zero = torch.zeros(1, 1)
    fg = 0.25 * 0.25 * math.log(2)
    bg = 0.75 * 0.25 * math.log(2)
    assert math.isclose(focal_loss(zero, torch.ones(1, 1)).item(), fg, rel_tol=1e-6)
    assert math.isclose(focal_loss(zero, torch.zeros(1, 1)).item(), bg, rel_tol=1e-6)
    both = focal_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert math.isclose(both.item(), (fg + bg) / 2, rel_tol=1e-6)
    assert focal_loss(torch.full((1, 4), BIG), torch.ones(1, 4)).item() < 1e-12


def test_iou_target_and_mse():
    logits = torch.tensor([[[[BIG, BIG], [-BIG, -BIG]]]])  # predicts the top row
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # left column: IoU 1/3
    assert torch.allclose(mask_iou(logits, target), torch.tensor([1 / 3]))
    pred = torch.tensor([[0.5]])
    assert torch.allclose(iou_mse_loss(pred, logits, target), torch.tensor([(0.5 - 1 / 3) ** 2]))
    empty = torch.zeros(1, 1, 2, 2)
    assert mask_iou(empty - BIG, empty).item() == 1.0


def test_segmote_loss_weights_and_gradients():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    iou = torch.rand(2, 1, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    out = SimpleNamespace(masks=logits, iou_pred=iou, balance_loss=torch.tensor(2.0))
    w = LossWeights(focal=20, dice=1, iou=1, balance=0.01)
    total, parts = segmote_loss(out, target, w)
    expect = 20 * parts["focal"] + parts["dice"] + parts["iou"] + 0.01 * 2.0
    assert torch.allclose(total, expect)
    assert set(parts) == {"focal", "dice", "iou", "balance"}
    total.backward()
    assert logits.grad.abs().sum() > 0 and iou.grad.abs().sum() > 0
    only_dice, _ = segmote_loss(out, target, LossWeights(0, 1, 0, 0))
    assert torch.allclose(only_dice, parts["dice"])
