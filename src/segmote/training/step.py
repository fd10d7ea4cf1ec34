"""One training step on cached image embeddings: simulated prompts, refinement rounds, loss,
and the guarded optimiser update. The image encoder never runs here.

`TrainStep` is an `nn.Module` whose `forward` does a whole step's forward pass (all prompt rounds)
so that `DistributedDataParallel` can wrap it: DDP only all-reduces gradients of work done inside
the wrapped module's `forward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.segmote import ImageFeatures, SegMoTE
from segmote.modeling.text_ensemble import text_ensemble
from segmote.training.config import TrainConfig
from segmote.training.losses import segmote_loss
from segmote.training.memory import release_free_memory
from segmote.simulated_prompts import (Prompt, error_clicks, sample_prompt, tight_box,
                                      to_model_coords)


@dataclass
class Batch:
    """A batch of cached slices (B on this rank).

    image_embedding: (B, D, h, w); early_features: (B, C, h', w');
    target: (B, 1, H, W) float 0/1 at mask resolution (H = 4h) in the padded model-input frame;
    seeds: one prompt seed per sample (from its position in the epoch, not in the batch, so the
        prompts do not depend on the batch split over ranks); keys: "dataset/class" per sample;
    class_names: per sample (the text of text prompts);
    absent: per sample, the classes of its dataset with no pixel in the slice (negatives for
        prompt-free training).
    class_target: (B, 1, H, W) every pixel of the sample's class: the target of a text prompt
        (differs from `target` only for instance-labelled data, where `target` is one instance).
    """

    image_embedding: Tensor
    early_features: Tensor
    target: Tensor
    seeds: list[list[int]]
    keys: list[str]
    class_names: list[str]
    absent: list[list[str]] | None = None
    class_target: Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        ct = None if self.class_target is None else \
            self.class_target.to(device, non_blocking=True)
        return Batch(self.image_embedding.to(device, non_blocking=True),
                     self.early_features.to(device, non_blocking=True),
                     self.target.to(device, non_blocking=True), self.seeds, self.keys,
                     self.class_names, self.absent, ct)


class _Out(NamedTuple):
    """The parts of a SegMoTEOutput the loss uses, reassembled over prompt groups."""

    masks: Tensor  # (B, 1, H, W)
    iou_pred: Tensor  # (B, 1)
    balance_loss: Tensor  # scalar


class StepOutput(NamedTuple):
    loss: Tensor  # scalar, mean over rounds
    parts: dict[str, Tensor]  # unweighted loss terms, means over rounds (detached)


def _points(prompts: list[Prompt], idx: list[int], k: int, scale: float,
            device: torch.device) -> tuple[Tensor, Tensor] | None:
    """Points of prompts[idx] padded to k with SAM's not-a-point label -1 -> (n, k, 2), (n, k).
    A fixed k (not the group's max) keeps each sample's tokens independent of its batch mates."""
    if k == 0:
        return None
    coords = np.zeros((len(idx), k, 2), np.float32)
    labels = np.full((len(idx), k), -1, np.int64)
    for row, i in enumerate(idx):
        n = len(prompts[i].labels)
        coords[row, :n] = prompts[i].points * scale
        labels[row, :n] = prompts[i].labels
    return torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device)


class TrainStep(nn.Module):
    """The forward pass of one training step (see module doc).

    Args:
        model: SegMoTE in train mode (its frozen base stays in eval mode).
        config: prompt mix, refinement rounds / clicks, loss weights.
        texts: class name -> (text_dim,) text embedding, for every class a text prompt may name
            (needed when the adapter takes text).
    """

    def __init__(self, model: SegMoTE, config: TrainConfig,
                 texts: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.weights = config.loss
        self.max_clicks = max(config.prompts.refine_clicks)
        self.has_text = model.adapter.text is not None
        self.has_ppt = model.adapter.ppt is not None
        if self.has_text and not texts:
            raise ValueError("an adapter with text prompts needs the class text embeddings")
        self.texts = dict(texts or {})
        self.mix = config.prompt_mix_at(0)
        # True between the end of a checkpointed forward pass and the next forward: the
        # decodes then are the backward pass's recomputations (where the peak is)
        self._recomputing = False

    def set_epoch(self, epoch: int) -> None:
        """Apply the progressive schedule: the prompt mix of `epoch`."""
        self.mix = self.config.prompt_mix_at(epoch)

    def _text(self, prompts: list[Prompt], idx: list[int], device: torch.device) -> Tensor:
        return torch.stack([self.texts[prompts[i].text] for i in idx]).to(device)

    def _structure(self, p: Prompt) -> tuple[str, bool, bool]:
        """(first kind, prompt-free, with text): rows that share it share a decode call."""
        return p.kind, p.auto and self.has_ppt, p.text is not None and self.has_text

    def _decode_rows(self, feats: ImageFeatures, sel: Tensor, points: tuple[Tensor, Tensor] | None,
                     boxes: Tensor | None, masks: Tensor | None, text: Tensor | None,
                     auto: bool) -> Any:
        """`SegMoTE.decode` of the batch rows `sel` (the rows are picked inside, so that under
        checkpointing no per-group copy of the (B, C, 4h, 4w) head features is kept)."""
        if self._recomputing and sel.device.type == "cpu":
            # the backward pass recomputes one group at a time: give back what the previous
            # group freed before this one allocates (`segmote.training.memory`)
            release_free_memory()
        return self.model.decode(
            ImageFeatures(feats.image_embedding[sel], feats.head_features[sel]),
            points=points, boxes=boxes, masks=None if masks is None else masks[sel], text=text,
            auto=auto)

    def _decode(self, feats: ImageFeatures, prompts: list[Prompt], masks: Tensor | None,
                round_: int, scale: float) -> _Out:
        """Decode the batch in groups of the same prompt structure (`_structure`): `decode`
        takes one box tensor, one point count and one text tensor for all its rows."""
        b = len(prompts)
        device = feats.image_embedding.device
        out_masks: list[Tensor | None] = [None] * b
        out_iou: list[Tensor | None] = [None] * b
        balance = feats.image_embedding.new_zeros((), dtype=torch.float32)
        groups: dict[tuple[str, bool, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(self._structure(p), []).append(i)
        for (kind, auto, with_text), idx in sorted(groups.items()):
            k = 0 if auto else (kind == "point") + round_ * self.max_clicks
            sel = torch.tensor(idx, device=device)
            boxes = None
            if kind == "box":
                boxes = torch.from_numpy(np.stack([prompts[i].box for i in idx]) * scale)
                boxes = boxes.to(device)
            args = (feats, sel, _points(prompts, idx, k, scale, device), boxes, masks,
                    self._text(prompts, idx, device) if with_text else None, auto)
            if self.config.runtime.recompute_rounds and torch.is_grad_enabled():
                # activation checkpointing: the backward pass recomputes this call (with the
                # router noise's RNG state restored), so one group's activations are alive at
                # a time instead of those of every group of every round
                out = checkpoint(self._decode_rows, *args, use_reentrant=False)
            else:
                out = self._decode_rows(*args)
            for row, i in enumerate(idx):
                out_masks[i], out_iou[i] = out.masks[row], out.iou_pred[row]
            # the balance loss is per decode call; weight each group by its share of the batch
            balance = balance + out.balance_loss.float() * (len(idx) / b)
        return _Out(torch.stack(out_masks), torch.stack(out_iou), balance)

    def forward(self, batch: Batch) -> StepOutput:
        cfg = self.config
        self._recomputing = False
        encoded = EncoderOutput(batch.image_embedding, batch.early_features)
        if self.config.runtime.recompute_rounds and torch.is_grad_enabled():
            # the head's image fusion (4x upsampling twice, at batch 16 ~0.5 GB of saved
            # activations) is recomputed in the backward pass as well: only its output stays
            feats = checkpoint(self.model.prepare_image, encoded, use_reentrant=False)
        else:
            feats = self.model.prepare_image(encoded)
        mask_size = batch.target.shape[-1]
        scale = self.model.img_size / mask_size
        gt = batch.target[:, 0].detach().cpu().numpy() > 0.5
        rngs = [np.random.default_rng(s) for s in batch.seeds]
        allow_text = self.has_text or self.has_ppt
        prompts = [sample_prompt(gt[i], rngs[i], self.mix, cfg.prompts.box_jitter, allow_text,
                                 batch.class_names[i], cfg.prompts.text_with_prompt)
                   for i in range(len(gt))]
        target = batch.target
        text_rows = [i for i, p in enumerate(prompts) if p.kind == "text"]
        if text_rows and batch.class_target is not None:
            # text alone names the class: every instance of it is the target
            target = target.clone()
            for i in text_rows:
                target[i] = batch.class_target[i]
                gt[i] = batch.class_target[i, 0].detach().cpu().numpy() > 0.5
        if allow_text and batch.absent is not None and cfg.prompts.absent_prob > 0:
            # some prompt-free rows ask for a class that is not in the slice: empty target
            empty = [i for i, p in enumerate(prompts) if p.kind == "text" and batch.absent[i]
                     and rngs[i].random() < cfg.prompts.absent_prob]
            if empty:
                target = target.clone() if target is batch.target else target
                for i in empty:
                    prompts[i].text = str(rngs[i].choice(batch.absent[i]))
                    target[i] = 0
                    gt[i] = False
        total: Tensor | float = 0.0
        sums: dict[str, Tensor] = {}
        mask_prompt = None
        rounds = 1 + cfg.prompts.refine_rounds
        for r in range(rounds):
            out = self._decode(feats, prompts, mask_prompt, r, scale)
            loss, parts = segmote_loss(out, target, self.weights)
            total = total + loss
            sums = {k: sums.get(k, 0) + v for k, v in parts.items()}
            if r + 1 < rounds:
                # the next round sees the previous logits (no gradient through them, as in SAM)
                mask_prompt = out.masks.detach().float()
                pred = (mask_prompt[:, 0] > 0).cpu().numpy()
                for i, rng in enumerate(rngs):
                    k = int(rng.choice(cfg.prompts.refine_clicks))
                    prompts[i].add_clicks(*error_clicks(pred[i], gt[i], k, rng))
        run = cfg.runtime
        trim = run.recompute_rounds and run.trim_memory and torch.is_grad_enabled()
        if trim and batch.image_embedding.device.type == "cpu":
            self._recomputing = True
            release_free_memory()  # what the forward pass freed, before the backward pass
        return StepOutput(total / rounds, {k: v / rounds for k, v in sums.items()})


class StepResult(NamedTuple):
    loss: float
    parts: dict[str, float]
    grad_norm: float
    skipped: bool


def _all_true(flag: bool, device: torch.device) -> bool:
    """True on every rank only if `flag` is True on every rank (so all ranks skip together)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() == 0.0)


def train_step(step: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               params: list[nn.Parameter], grad_clip: float, autocast: Any,
               scaler: torch.amp.GradScaler | None, device: torch.device) -> StepResult:
    """Forward, backward, clip and update; a step whose loss or gradient is not finite is
    skipped (no update; the grad scaler, if any, lowers its scale) and reported.

    step: `TrainStep` or its DDP wrapper. params: the trainable parameters (clipped together).
    autocast: a context manager factory (bf16 / fp16 autocast on GPU, a no-op on CPU).
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        out = step(batch)
    loss = out.loss
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    finite = bool(torch.isfinite(loss).item()) and bool(torch.isfinite(norm).item())
    finite = _all_true(finite, device)
    if finite:
        if scaler is not None:
            scaler.step(optimizer)  # unscale_ was called above: it only steps
        else:
            optimizer.step()
    if scaler is not None:
        scaler.update()  # after an inf gradient this halves the scale
    optimizer.zero_grad(set_to_none=True)
    return StepResult(float(loss.item()), {k: float(v.item()) for k, v in out.parts.items()},
                      float(norm.item()), not finite)


@torch.no_grad()
def predict_boxes(model: SegMoTE, batch: Batch, autocast: Any,
                  texts: dict[str, Tensor] | None = None
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Validation prediction with the tight ground-truth box (deterministic: eval mode, no
    jitter). Returns (B, H, W) bool masks at mask resolution; with `texts` (class name ->
    embedding) also the masks with each sample's class text used beside its box as at inference
    (`text_ensemble`: the mean of the decodes with and without it), as (box alone, with text),
    from one decode without the text."""
    gt = batch.target[:, 0].cpu().numpy() > 0.5
    boxes = torch.from_numpy(np.stack([to_model_coords(tight_box(m), gt.shape[-1],
                                                       model.img_size) for m in gt]))
    boxes = boxes.to(batch.target.device)
    with autocast():
        image = model.prepare_image(EncoderOutput(batch.image_embedding, batch.early_features))
        plain = model.decode(image, boxes=boxes)
        if texts is None:
            return (plain.masks[:, 0].float() > 0).cpu().numpy()
        text = torch.stack([texts[n] for n in batch.class_names]).to(batch.target.device)
        both = text_ensemble(model.decode(image, boxes=boxes, text=text), plain)
    return tuple((o.masks[:, 0].float() > 0).cpu().numpy() for o in (plain, both))


@torch.no_grad()
def predict_auto(model: SegMoTE, batch: Batch, texts: dict[str, Tensor], autocast: Any,
                 names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prompt-free prediction of the class `names[i]` (default: each sample's own class) on
    each sample's slice: PPT tokens conditioned on the class text. Returns (B, H, W) float32
    mask logits at mask resolution (the mask is logits > 0 before calibration) and (B,)
    confidences (the selected expert token's predicted IoU)."""
    names = names or batch.class_names
    # callers score these masks against `batch.class_target` (text names every instance)
    text = torch.stack([texts[n] for n in names]).to(batch.target.device) \
        if model.adapter.text is not None else None
    with autocast():
        out = model.decode(model.prepare_image(EncoderOutput(batch.image_embedding,
                                                             batch.early_features)),
                           text=text, auto=True)
    return out.masks[:, 0].float().cpu().numpy(), out.iou_pred[:, 0].float().cpu().numpy()


def dice_scores(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-sample Dice of (B, H, W) bool masks; 1 when both are empty. -> (B,) float64."""
    inter = (pred & gt).sum((1, 2))
    total = pred.sum((1, 2)) + gt.sum((1, 2))
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
