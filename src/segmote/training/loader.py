"""Batches of cached slices: a deterministic epoch plan shared by all ranks, and a map-style
dataset over the embedding cache (so DataLoader workers can prefetch from disk).

The plan is a function of (seed, epoch) only: every rank computes the same global order and takes
its own slice of each global batch, and a resumed run rebuilds it and skips the steps already done.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segmote.data.datasets import class_mask
from segmote.training.step import Batch


def sample_weights(groups: list[tuple[str, str]], balance: str,
                   power: float = 0.0) -> np.ndarray | None:
    """Drawing probabilities for `balance` ("none" -> None) from each sample's (dataset, class).

    "dataset": dataset d gets a share proportional to n_d ** power (power 0: every dataset the
    same share; 0.5: "temperature" sampling, which eases the overfitting of a tiny dataset drawn
    as often as a large one; 1: proportional, i.e. no balancing); "dataset_class": the same
    shares, split equally between each dataset's classes. Within a group every sample is equally
    likely.
    """
    if balance == "none":
        return None
    if balance not in ("dataset", "dataset_class"):
        raise ValueError(f"unknown balance {balance!r}")
    key = [g if balance == "dataset_class" else (g[0], "") for g in groups]
    size: dict[tuple[str, str], int] = {}
    for k in key:
        size[k] = size.get(k, 0) + 1
    groups_in: dict[str, int] = {}  # dataset -> number of its groups
    n_in: dict[str, int] = {}  # dataset -> number of its samples
    for (dataset, _), n in size.items():
        groups_in[dataset] = groups_in.get(dataset, 0) + 1
        n_in[dataset] = n_in.get(dataset, 0) + n
    share = {d: n ** power for d, n in n_in.items()}
    total = sum(share.values())
    w = np.array([share[k[0]] / (total * groups_in[k[0]] * size[k]) for k in key])
    return w / w.sum()


def epoch_plan(num_samples: int, global_batch: int, seed: int, epoch: int,
               weights: np.ndarray | None = None,
               samples_per_epoch: int | None = None) -> list[list[tuple[int, int]]]:
    """Global batches of one epoch as (position, sample index) pairs.

    Without weights: a fresh permutation per epoch (the first samples_per_epoch of it, or all);
    with weights (`sample_weights`): samples_per_epoch (default num_samples) draws with
    replacement. The last batch is filled up from the start of the order (as
    `DistributedSampler` pads), so every step has exactly `global_batch` samples and the number of
    steps, ceil(N / global_batch), does not depend on the number of ranks.
    """
    rng = np.random.default_rng([seed, epoch])
    n = samples_per_epoch or num_samples
    if weights is None:
        order = rng.permutation(num_samples)
        if n > num_samples:  # more than one pass: fresh permutations back to back
            order = np.concatenate([order] + [rng.permutation(num_samples)
                                              for _ in range(math.ceil(n / num_samples) - 1)])
        order = order[:n]
    else:
        order = rng.choice(num_samples, size=n, replace=True, p=weights)
    steps = math.ceil(n / global_batch)
    padded = np.resize(order, steps * global_batch)  # np.resize repeats the array
    return [[(s * global_batch + j, int(padded[s * global_batch + j]))
             for j in range(global_batch)] for s in range(steps)]


def rank_slice(batch: list[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's contiguous share of a global batch (global_batch % world_size == 0)."""
    n = len(batch) // world_size
    return batch[rank * n:(rank + 1) * n]


def other_modality_classes(samples: list[Any]) -> dict[str, list[str]]:
    """dataset -> the class names that no dataset of its modality labels (sorted), from the
    samples' (dataset, modality, class name). A dataset of unknown modality (None) gets none,
    and its classes are never counted as another modality's: it may image anything.

    These are the extra negatives of `absent_other_modalities` (`TrainConfig`)."""
    modality: dict[str, str | None] = {}
    names_of: dict[str, set[str]] = {}
    for s in samples:
        modality[s.dataset] = s.modality
        names_of.setdefault(s.dataset, set()).add(s.class_name)
    labelled: dict[str | None, set[str]] = {}  # modality -> names its datasets label
    for d, names in names_of.items():
        labelled.setdefault(modality[d], set()).update(names)
    unknown = labelled.get(None, set())
    known = {n for m, names in labelled.items() if m is not None for n in names} - unknown
    return {d: sorted(known - labelled[m]) for d, m in modality.items() if m is not None}


class CachedSlices(Dataset):
    """Cached training / validation slices; items are (position, sample index) pairs.

    cache: an `EmbeddingCache` already built for `samples`. seed, epoch: for the prompt seeds.
    classes: dataset -> {label value: class name} of every class a text prompt may name (default:
        the classes of `samples`); an item lists those with no pixel in its slice as "absent".
    other: dataset -> class names that are absent from every slice of the dataset (classes of
        other modalities, `other_modality_classes`); added to each item's "absent".
    """

    def __init__(self, cache: Any, samples: list[Any], seed: int,
                 classes: dict[str, dict[int, str]] | None = None,
                 other: dict[str, list[str]] | None = None) -> None:
        self.cache, self.samples, self.seed = cache, samples, seed
        self.epoch = 0
        if classes is None:
            classes = {}
            for s in samples:
                classes.setdefault(s.dataset, {})[int(s.class_value)] = s.class_name
        self.classes = classes
        self.other = other or {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def class_names(self) -> list[str]:
        """Every class name a query may ask for (sorted; one name shared by two datasets is
        one class to the text prompt, so it is one here too)."""
        names = {n for per in self.classes.values() for n in per.values()}
        return sorted(names | {s.class_name for s in self.samples})

    def key(self, i: int) -> str:
        s = self.samples[i]
        return f"{s.dataset}/{s.class_name}"

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        pos, i = item
        s = self.samples[i]
        cached = self.cache.get(s)
        return {"emb": cached.image_embedding, "early": cached.early_features,
                "target": (cached.label == int(s.class_value)).float()[None],
                # what a text prompt names: every instance of the class (a box names one)
                "class_target": class_mask(cached.label, s).float()[None],
                "seed": [self.seed, self.epoch, pos], "key": self.key(i),
                "class_name": s.class_name, "absent": self.absent(s, cached.label)}

    def absent(self, sample: Any, label: torch.Tensor) -> list[str]:
        """Classes of the sample's dataset with no pixel in its label plane (a class with
        several values, e.g. instance ids, counts as present if any value is), plus the
        dataset's `other` classes; sorted names."""
        present = set(torch.unique(label).tolist())
        names: dict[str, bool] = {}
        for value, name in self.classes.get(sample.dataset, {}).items():
            names[name] = names.get(name, False) or value in present
        for name in self.other.get(sample.dataset, ()):
            names.setdefault(name, False)
        return sorted(n for n, here in names.items() if not here and n != sample.class_name)


def collate(items: list[dict[str, Any]]) -> Batch:
    return Batch(torch.stack([it["emb"] for it in items]).float(),
                 torch.stack([it["early"] for it in items]).float(),
                 torch.stack([it["target"] for it in items]),
                 [it["seed"] for it in items], [it["key"] for it in items],
                 [it["class_name"] for it in items], [it["absent"] for it in items],
                 torch.stack([it["class_target"] for it in items]))


def make_loader(dataset: CachedSlices, batches: list[list[tuple[int, int]]],
                num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over the given (already rank-sliced) batches, in order."""
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False)
