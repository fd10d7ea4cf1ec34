"""What the curation benchmarks share: the Colin27/AAL sample, its embedding cache, the
held-out block pattern of `bench_curation.py subset`, and training + scoring one adapter.

Used by bench_curation.py (planted, speed, subset; its policy part is curation_policy.py),
bench_curation_mixed.py and bench_curation_noisy.py. Every adapter they compare is trained by
`segmote.training.trainer.fit`, the trainer of `segmote train` (`train_and_eval`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, write_result

AAL = "colin27/Dataset003_Colin27AAL"
CACHE = Path.home() / ".cache" / "segmote" / "curation-bench" / "cache"


def embedding_cache(model=None, root: Path | None = None):
    """The LiteMedSAM embedding cache in `root` (default: CACHE, the AAL benchmarks' folder);
    `model` encodes missing entries (default: the base model, built here)."""
    from segmote.build import build_base, resolve_weights
    from segmote.data.cache import EmbeddingCache

    _, sha = resolve_weights("litemedsam", None)
    return EmbeddingCache(root or CACHE, model if model is not None else build_base(),
                          f"litemedsam-{sha[:16]}")


def aal_root() -> Path:
    from segmote.samples import fetch_sample, sample_path
    fetch_sample("colin27")
    return sample_path("colin27") / AAL.split("/")[1]


def held_out(z: int) -> bool:
    return (z // 10) % 4 == 3


def train_pool(z: int) -> bool:
    return not any(held_out(z + d) for d in range(-2, 3))


def validation_block(z: int) -> bool:
    """Block 1 of every 4 blocks of 10 slices: inside the training pool (block 3 is held out)."""
    return (z // 10) % 4 == 1


def train_and_eval(datasets, samples, held, cfg, cache_root: Path | None = None) -> dict:
    """Train a fresh adapter on exactly `samples` (of `datasets`) with the public trainer
    (`segmote.training.trainer.fit`, the one `segmote train` runs, via a selection manifest and
    no validation split) and score it on `held` with `validate` (box prompts, batch 16).

    cfg: `train_config`; its seed fixes the init, the batch order, the prompts and the router
    noise. cache_root: the embedding cache folder (default: this benchmark's)."""
    from segmote.build import load_model
    from segmote.curation.manifest import selection_manifest
    from segmote.training import distributed as ddp
    from segmote.training.loader import CachedSlices
    from segmote.training.trainer import autocast_for, fit, validate

    root = cache_root or CACHE
    with tempfile.TemporaryDirectory(prefix="segmote-curation-") as tmp:
        manifest = selection_manifest(datasets, samples, Path(tmp) / "manifest.json")
        run_cfg = cfg.replace(manifest=str(manifest), val_fraction=0.0, cache_dir=str(root),
                              save_every=0)
        t = time.perf_counter()
        result = fit(run_cfg, [], Path(tmp) / "run", device="cpu", progress=False)
        train_s = time.perf_counter() - t
        model = load_model(adapter=str(result.latest_adapter))
    info = ddp.setup("cpu")
    val = validate(model, CachedSlices(embedding_cache(model, root), held, cfg.seed), 16, info,
                   autocast_for("none", torch.device("cpu"))[0])
    dices = list(val["per_class"].values())
    return {"steps": result.global_step, "train_s": round(train_s, 1),
            "held_out_class_mean_dice": round(float(np.mean(dices)), 4),
            "held_out_dataset_mean_dice": round(float(val["mean_dice"]), 4),
            "per_dataset": {k: round(v, 4) for k, v in val["per_dataset"].items()},
            "per_class": val["per_class"]}


def train_config(epochs: int, batch: int, refine: int, seed: int):
    """The curation benchmarks' TrainConfig: box/point prompts only (no text encoder, no PPT),
    lr 1e-3 without milestones."""
    from segmote.training.config import TrainConfig

    return TrainConfig().replace(epochs=epochs, batch_size=batch, lr=1e-3, refine_rounds=refine,
                                 seed=seed, milestones=[], text_encoder=None, ppt_queries=0)


def subset_split(held_max: int):
    """(dataset, held-out samples, training pool): AAL axial masks of >= 10 px; held-out =
    every 4th block of 10 slices (evenly thinned to held_max), pool = the slices at least 3
    away from any held-out slice."""
    from segmote.data.datasets import discover, slice_samples

    (d,) = discover([aal_root()])
    every = slice_samples([d], {d.name: {"train": ["colin27"], "val": []}}, axis=2,
                          min_foreground=10).samples
    held = [s for s in every if held_out(s.slice_index)]
    if len(held) > held_max:  # evenly spaced: every held-out slice region stays represented
        held = [held[i] for i in np.linspace(0, len(held) - 1, held_max).round().astype(int)]
    pool = [s for s in every if train_pool(s.slice_index)]
    return d, held, pool, every


def save_part(part: str, out: dict) -> None:
    """Store one benchmark part's result under its key of benchmarks/results/curation.json,
    keeping the other parts. The file is read just before writing: parts run in parallel.
    A part that trains adapters records that `fit()` trained them ("trainer": report_curation
    tells results of the earlier, benchmark-own loop by its absence)."""
    if part not in ("planted", "speed"):  # the two parts that train nothing
        out["trainer"] = "fit"
    path = RESULTS / "curation.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[part] = out
    write_result("curation", results)


def keep_seed_copy(part: str, seed: int, out: dict) -> None:
    """Write one seed's result to the temp folder as soon as it exists, so a failure later in
    the parent process loses no training run."""
    (Path(tempfile.gettempdir()) / f"segmote-curation-{part}-seed{seed}.json").write_text(
        json.dumps(out))
