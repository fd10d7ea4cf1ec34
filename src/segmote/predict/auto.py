"""Prompt-free and automatic segmentation on top of `Segmenter`, with the adapter's calibration.

`AutoSegmenter` (like SAM's `SamAutomaticMaskGenerator` beside `SamPredictor`) runs one PPT pass
per class name on the image the `Segmenter` holds and assembles one label map. Three things
calibrated on the adapter's training data decide what is kept (`segmote.adapter.card`): a logit
offset per class ("mask_offsets", a mask is logits + offset > 0), a confidence threshold on the
selected expert token's predicted IoU, and, with a presence head, the probability that the class
is in the image at all (`segmote.modeling.presence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from segmote.adapter.card import AdapterCard, Calibration, PresenceInfo
from segmote.errors import InputError

if TYPE_CHECKING:  # the Segmenter imports this module for its calibration helpers
    from segmote.predict.segmenter import Segmenter


def card_of(model: Any) -> AdapterCard:
    """The model's adapter card (an empty one for a base model or a fresh adapter)."""
    return getattr(model, "card", None) or AdapterCard()


def mask_offsets(card: AdapterCard, names: Sequence[str]) -> np.ndarray:
    """(N,) float32 logit offsets of prompt-free masks of these classes (0 without a
    calibration): a mask is logits + offset > 0."""
    calib = card.calibration or Calibration()
    return np.array([calib.mask_offset(n) for n in names], np.float32)


def text_beside_prompt(card: AdapterCard, names: Sequence[str]) -> np.ndarray:
    """(N,) bool: is each class's text used beside a box / points (`text_ensemble`)? True
    without a calibration; older calibrations stored one choice per class, still honoured."""
    calib = card.calibration or Calibration()
    return np.array([calib.uses_text_beside_prompt(n) for n in names], bool)


def presence_threshold(card: AdapterCard) -> float:
    """Keep a prompt-free mask only where the presence probability reaches this."""
    return (card.presence or PresenceInfo()).threshold


def presence_probability(model: Any, features: Any, text: Tensor) -> np.ndarray | None:
    """(N,) probabilities that the classes of text embeddings (N, text_dim) are in the image
    of `features` (None without a presence head)."""
    if getattr(getattr(model, "adapter", None), "presence", None) is None:
        return None
    return torch.sigmoid(model.presence_logits(features, text).float()).cpu().numpy()


@dataclass
class AutoPrediction:
    """Result of `AutoSegmenter.predict`: one prompt-free pass per class.

    label_map: (H, W) uint8/uint16, value i = classes[i - 1] (0: background).
    classes: the classes asked for, in label order.
    confidence: class -> the selected expert token's predicted IoU.
    kept: class -> its mask was kept (non-empty, confidence >= threshold and, with a presence
        head, presence >= its threshold).
    threshold: the confidence threshold used.
    presence: class -> the presence head's probability that the class is in the image (empty
        for an adapter without one).
    """

    label_map: np.ndarray
    classes: list[str]
    confidence: dict[str, float]
    kept: dict[str, bool]
    threshold: float
    presence: dict[str, float] = field(default_factory=dict)


class AutoSegmenter:
    """Prompt-free multi-class segmentation of the image a `Segmenter` holds."""

    def __init__(self, segmenter: Segmenter, chunk: int = 32) -> None:
        self.seg, self.chunk = segmenter, chunk

    @torch.inference_mode()
    def predict(self, classes: Sequence[str] | None = None,
                threshold: float | None = None) -> AutoPrediction:
        """One PPT pass per class (batched by `chunk`: the image is encoded once), assembled
        into one label map.

        classes: class names (default: the adapter's vocabulary).
        threshold: keep a class's mask only if its confidence (predicted IoU) reaches it
            (default: the adapter's calibrated threshold, else 0).
        A pixel goes to the kept class with the highest positive logit (each class's logits
        shifted by its calibrated offset).
        """
        seg = self.seg
        if seg.features is None:
            raise InputError("call set_image() before predict_auto()")
        if not seg.prompt_free or not seg.takes_text:
            raise InputError("automatic multi-class segmentation needs an adapter trained with "
                             "PPT and text prompts")
        names = list(classes) if classes else seg.vocabulary
        if not names:
            raise InputError("give the classes to segment (the adapter lists none)")
        card = card_of(seg.model)
        if threshold is None:
            threshold = (card.calibration or Calibration()).threshold
        logits, conf, present = [], [], []
        for start in range(0, len(names), self.chunk):
            part = names[start:start + self.chunk]
            text = seg.embed_text(part)
            out = seg.model.decode(seg.features, text=text, auto=True)
            off = torch.from_numpy(mask_offsets(card, part)).to(out.masks.device)
            logits.append(seg.geometry.logits_to_original(
                out.masks[:, :1].float() + off.view(-1, 1, 1, 1))[:, 0].cpu().numpy())
            conf.append(out.iou_pred[:, 0].float().cpu().numpy())
            present.append(presence_probability(seg.model, seg.features, text))
        stack, score = np.concatenate(logits), np.concatenate(conf)
        kept = (stack > 0).any(axis=(1, 2)) & (score >= threshold)
        presence = np.concatenate(present) if seg.has_presence else None
        if presence is not None:
            kept &= presence >= presence_threshold(card)
        return AutoPrediction(_label_map(stack, kept, len(names)), names,
                              {n: float(c) for n, c in zip(names, score)},
                              {n: bool(k) for n, k in zip(names, kept)}, threshold,
                              {} if presence is None else
                              {n: float(p) for n, p in zip(names, presence)})


def _label_map(stack: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
    """(C, H, W) logits -> (H, W) label map: per pixel the kept class with the highest positive
    logit, value = its index + 1."""
    dtype = np.uint8 if n < 256 else np.uint16
    label = np.zeros(stack.shape[1:], dtype)
    if kept.any():
        masked = np.where(kept[:, None, None], stack, -np.inf)
        best = masked.argmax(0)
        label = np.where(masked.max(0) > 0, best + 1, 0).astype(dtype)
    return label
