"""The data of a training run: dataset folders or a curation manifest, the patient-level split,
the per-class caps, class texts and the query tables that prompt-free training asks from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmote.data.cache import default_cache_dir
from segmote.errors import InputError
from segmote.training import distributed as ddp
from segmote.training.config import TrainConfig
from segmote.training.loader import other_modality_classes

def cache_root(cfg: TrainConfig) -> Path:
    """The run's embedding cache: config cache_dir, else the shared default
    (`segmote.data.cache.default_cache_dir`)."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()


CALIBRATION_PER_CLASS = 8  # training samples per class that calibrate_on "train" asks for


def load_run_data(cfg: TrainConfig, data_dirs: list[Path], out_dir: Path, resume: bool,
               info: ddp.DistInfo) -> tuple[list[Any], dict[str, Any], Any, Any]:
    from segmote.data.datasets import discover, load_split, make_split, save_split, \
        slice_samples

    selection = None
    if cfg.data.manifest is not None:
        from segmote.curation.manifest import manifest_samples

        datasets, selection = manifest_samples(cfg.data.manifest)
        source = cfg.data.manifest
    else:
        datasets = discover(data_dirs)
        source = ", ".join(map(str, data_dirs))
    split_path = out_dir / "split.json"
    if resume and split_path.is_file():
        split = load_split(split_path)  # never re-split a run: val cases must stay val
    elif cfg.data.split is not None:
        split = load_split(Path(cfg.data.split))
    else:
        split = make_split(datasets, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    if selection is not None:
        train_samples = _in_split(selection, split, "train")
        val_samples = _in_split(selection, split, "val")
    else:
        kw = dict(axis=cfg.data.axis, min_foreground=cfg.data.min_foreground)
        train_samples = slice_samples(datasets, split, part="train", **kw).samples
        val_samples = slice_samples(datasets, split, part="val", **kw).samples
    val_samples = cap_per_class(val_samples, cfg.data.val_per_class)
    if not train_samples:
        what = "selected sample" if selection is not None else \
            f"slice with >= {cfg.data.min_foreground} foreground pixels"
        raise InputError(f"{source}: no training {what} (check the split)")
    # written only once the data checks passed: a refused run leaves no folder behind
    out_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main and not (resume and split_path.is_file()):
        save_split(split, split_path)
    return datasets, split, train_samples, val_samples


def _in_split(samples: list[Any], split: dict[str, Any], part: str) -> list[Any]:
    """The samples whose case is in `part` ("train" / "val") of their dataset's split."""
    cases = {name: set(entry.get(part, [])) for name, entry in split.items()}
    return [s for s in samples if s.case_id in cases.get(s.dataset, ())]


def class_texts(cfg: TrainConfig, names: list[str]) -> tuple[dict[str, torch.Tensor],
                                                               dict[str, Any]]:
    """Text embeddings of the class names ({} without a text encoder) and what to record
    about the encoder in the adapter ("text" metadata: name, id, template, dim)."""
    if not cfg.uses_text:
        return {}, {}
    from segmote.text.classes import class_embeddings

    found = class_embeddings(names, cfg.model.text_encoder, cfg.model.text_encoder_path)
    return dict(zip(names, found.embeddings)), found.metadata()


def cap_per_class(samples: list[Any], cap: int | None) -> list[Any]:
    """At most `cap` samples per dataset/class, evenly spaced in their order (None: all)."""
    if cap is None:
        return samples
    groups: dict[tuple[str, str], list[Any]] = {}
    for s in samples:
        groups.setdefault((s.dataset, s.class_name), []).append(s)
    keep = set()
    for group in groups.values():
        picks = np.linspace(0, len(group) - 1, min(cap, len(group))).round().astype(int)
        keep.update(id(group[i]) for i in picks)
    return [s for s in samples if id(s) in keep]


def class_table(samples: list[Any]) -> dict[str, dict[int, str]]:
    """dataset -> {label value: class name} of the samples (what `CachedSlices` may ask for)."""
    classes: dict[str, dict[int, str]] = {}
    for s in samples:
        classes.setdefault(s.dataset, {})[int(s.class_value)] = s.class_name
    return classes


def query_tables(cfg: TrainConfig, samples: list[Any]) -> dict[str, Any]:
    """The keyword arguments of `CachedSlices` that say which classes a text query may name:
    `classes` (`class_table`) and, with `absent_other_modalities`, `other`
    (`other_modality_classes`)."""
    other = other_modality_classes(samples) if cfg.prompts.absent_other_modalities else None
    return {"classes": class_table(samples), "other": other}


def calibration_samples(cfg: TrainConfig, train_samples: list[Any],
                        val_samples: list[Any]) -> list[Any]:
    """What the automatic mode is calibrated on (`calibrate_on`): the validation samples, or
    CALIBRATION_PER_CLASS training samples per class."""
    if cfg.calibration.calibrate_on == "val":
        return val_samples
    return cap_per_class(train_samples, CALIBRATION_PER_CLASS)
