"""Per-epoch validation of a training run: box-prompt Dice and prompt-free Dice per dataset and
class (sharded over DDP ranks), plus the histograms that calibrate the automatic mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from segmote.modeling.segmote import SegMoTE
from segmote.training import distributed as ddp
from segmote.training.calibration import ZERO, CalibrationCounts, offset_dice, offset_nonempty
from segmote.training.loader import CachedSlices, make_loader
from segmote.training.step import dice_scores, predict_auto, predict_boxes


@torch.no_grad()
def validate(model: SegMoTE, data: CachedSlices, batch_size: int, info: ddp.DistInfo,
             autocast: Callable[[], Any]) -> dict[str, Any]:
    """Box-prompt Dice per dataset and class (mask resolution, deterministic), sharded over
    ranks. mean_dice: mean over datasets of their class-mean Dice (None without validation
    slices)."""
    keys = sorted({data.key(i) for i in range(len(data))})
    sums = torch.zeros(2, len(keys), dtype=torch.float64)
    was_training = model.training
    model.eval()  # no router noise
    mine = [(i, i) for i in range(info.rank, len(data), info.world_size)]
    loader = make_loader(data, [mine[j:j + batch_size] for j in range(0, len(mine), batch_size)],
                         0, False)
    for batch in loader:
        batch = batch.to(info.device)
        gt = batch.target[:, 0].cpu().numpy() > 0.5
        for key, d in zip(batch.keys, dice_scores(predict_boxes(model, batch, autocast), gt)):
            sums[0, keys.index(key)] += d
            sums[1, keys.index(key)] += 1
    model.train(was_training)
    sums = ddp.all_reduce_sum(sums.to(info.device), info).cpu()
    return class_means(keys, sums)


@torch.no_grad()
def validate_auto(model: SegMoTE, data: CachedSlices, batch_size: int, info: ddp.DistInfo,
                  autocast: Callable[[], Any], texts: dict[str, torch.Tensor],
                  calibrate: bool = True) -> tuple[dict[str, Any], CalibrationCounts]:
    """Prompt-free Dice per dataset and class (each sample's own class, no offset or threshold)
    and the calibration counts (`segmote.training.calibration`; classes: `data.class_names`):
    every sample also asks for one class of its dataset that is absent from its slice (chosen
    by position, deterministic) and, with text, is decoded with its box without and with its
    class text. calibrate=False skips those extra decodes (the counts come back empty)."""
    keys = sorted({data.key(i) for i in range(len(data))})
    sums = torch.zeros(2, len(keys), dtype=torch.float64)
    counts = CalibrationCounts(data.class_names)
    was_training = model.training
    model.eval()
    mine = [(i, i) for i in range(info.rank, len(data), info.world_size)]
    loader = make_loader(data, [mine[j:j + batch_size] for j in range(0, len(mine), batch_size)],
                         0, False)
    for batch in loader:
        batch = batch.to(info.device)
        target = batch.class_target if batch.class_target is not None else batch.target
        gt = target[:, 0].cpu().numpy() > 0.5
        logits, conf = predict_auto(model, batch, texts, autocast)
        for key, name, d, c in zip(batch.keys, batch.class_names, offset_dice(logits, gt), conf):
            sums[0, keys.index(key)] += d[ZERO]
            sums[1, keys.index(key)] += 1
            if calibrate:
                counts.add_present(name, d, float(c))
        if not calibrate:
            continue
        if model.adapter.text is not None:  # does the text help beside the sample's box?
            box_gt = batch.target[:, 0].cpu().numpy() > 0.5
            plain, with_text = (dice_scores(m, box_gt)
                                for m in predict_boxes(model, batch, autocast, texts))
            for name, a, b in zip(batch.class_names, plain, with_text):
                counts.add_box(name, float(a), float(b))
        rows = [i for i, a in enumerate(batch.absent or []) if a]
        if rows:
            names = [batch.absent[i][batch.seeds[i][2] % len(batch.absent[i])] for i in rows]
            sub = dataclasses.replace(
                batch, image_embedding=batch.image_embedding[rows],
                early_features=batch.early_features[rows], target=batch.target[rows],
                seeds=[batch.seeds[i] for i in rows], keys=[batch.keys[i] for i in rows],
                class_names=names, absent=None, class_target=None)
            logits, conf = predict_auto(model, sub, texts, autocast)
            for name, m, c in zip(names, offset_nonempty(logits), conf):
                counts.add_absent(name, m, float(c))
    model.train(was_training)
    sums = ddp.all_reduce_sum(sums.to(info.device), info).cpu()
    reduced = ddp.all_reduce_sum(torch.from_numpy(counts.array()).to(info.device), info).cpu()
    return (class_means(keys, sums),
            CalibrationCounts.from_array(reduced.numpy(), data.class_names))


def class_means(keys: list[str], sums: torch.Tensor) -> dict[str, Any]:
    """Dice per "dataset/class" key (sums: (2, K) Dice sums and counts), per dataset (class
    mean) and mean_dice: the mean over datasets, so an atlas with 116 classes does not outvote a
    tumour set (None without samples)."""
    per_class = {k: float(sums[0, j] / sums[1, j]) for j, k in enumerate(keys) if sums[1, j] > 0}
    per_dataset: dict[str, list[float]] = {}
    for key, d in per_class.items():
        per_dataset.setdefault(key.split("/", 1)[0], []).append(d)
    means = {k: float(np.mean(v)) for k, v in per_dataset.items()}
    return {"mean_dice": float(np.mean(list(means.values()))) if means else None,
            "per_dataset": means, "per_class": per_class}
