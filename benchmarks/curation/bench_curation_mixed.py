"""Curated vs random subset on a heterogeneous pool (issue 7); writes the "mixed" key of
benchmarks/results/curation.json.

    python benchmarks/curation/bench_curation_mixed.py [--budget 320] [--seeds 0 1 2] [--cache DIR]

`bench_curation.py subset` pools one clean atlas. The issue's setting is a pool of datasets of
very different sizes and modalities, which is what balancing is for. This benchmark pools the
training cases of the default adapter's five datasets and split (`segmote.training.default_adapter
prepare`, real sample data):

- pyradiomics CT tumour (1 patient) and MR tumour (2 patients): the held-out patients are unseen;
- DSB 2018 nuclei (3 quadrants, one sample per nucleus): the held-out quadrant is the same image;
- Colin27 AAL structures and brain mask (9 axial slabs each): the held-out slabs are the same
  subject.

The pool has 3,218 masks of >= 10 px, 93 % of them AAL structures.

Per seed:
- curated: `curate` (the default CurationConfig, budget B) over the pool's cases;
- random: B masks drawn uniformly from the pool's masks of >= 10 px (the trainer's own rule).

Each subset trains a fresh adapter (the config of `bench_curation.py subset`). Each adapter is
then scored by `validate` on the held-out masks of >= 20 px (box prompts, as in
bench_default_adapter), at most --held-max per dataset, evenly thinned (only AAL, 977 masks, has
more: scoring all of them costs ~6 min per adapter on one thread).

The primary metric was fixed before the first run: `validate`'s mean_dice, the mean over datasets
of their class-mean Dice. It is the trainer's own model-selection metric, chosen so that an atlas
with 116 classes does not outvote a tumour set. Also reported: Dice per dataset, and the mean over
all (dataset, class) pairs, which the AAL structures dominate. The held-out set chooses nothing;
it is only evaluated. Seeds run in --jobs parallel processes of one torch thread each.

`--validation` chooses a curation policy without the held-out set (writes the
"mixed_validation" key): per dataset with >= 2 training cases, its middle training case (index
n // 2 in split order; the last AAL and brain slabs hold no mask) leaves the pool and its masks
of >= 20 px (same thinning) are the validation set; CT (one training patient) stays in the
pool, unscored. The arms are curated subsets with `--balance cell` and `--balance modality`;
no random arm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

# this folder (the curation modules) and benchmarks/ (common.py)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from common import machine  # noqa: E402
from curation_common import (embedding_cache, keep_seed_copy, save_part,  # noqa: E402
                             train_and_eval, train_config)

HOME = Path.home() / ".cache" / "segmote" / "curation-bench"
DATA = HOME / "mixed-data"
CACHE = HOME / "mixed-cache"
HELD_MIN_PX = 20  # held-out masks: bench_default_adapter's rule


def validation_split(split: dict) -> dict:
    """The split's training cases only: per dataset with >= 2 training cases the middle one
    (index n // 2) becomes "val"; a dataset with one training case keeps it in "train" with no
    "val"."""
    out = {}
    for name, entry in split.items():
        train = list(entry["train"])
        if len(train) >= 2:
            mid = len(train) // 2
            out[name] = {"train": train[:mid] + train[mid + 1:], "val": [train[mid]]}
        else:
            out[name] = {"train": train, "val": []}
    return out


def _split(data_root: Path, held_max: int, validation: bool = False):
    """(datasets, pool: training masks of >= 10 px, held-out masks of >= HELD_MIN_PX (at most
    held_max per dataset, evenly thinned), the split's training cases as (dataset, case)).
    validation: held-out = `validation_split`'s "val" cases, which leave the pool."""
    from segmote.data.datasets import discover, load_split, slice_samples

    prepared = json.loads((data_root / "prepared.json").read_text())
    datasets = discover([Path(p) for p in prepared["data_dirs"]])
    split = load_split(Path(prepared["split"]))
    if validation:
        split = validation_split(split)
    pool = slice_samples(datasets, split, part="train", axis=2, min_foreground=10).samples
    every = slice_samples(datasets, split, part="val", axis=2, min_foreground=HELD_MIN_PX).samples
    held = []
    for d in datasets:  # evenly spaced: every held-out slab region stays represented
        mine = [s for s in every if s.dataset == d.name]
        if len(mine) > held_max:
            mine = [mine[i] for i in np.linspace(0, len(mine) - 1, held_max).round().astype(int)]
        held += mine
    train_cases = {(d, c) for d, v in split.items() for c in v.get("train", [])}
    return datasets, pool, held, train_cases


def _per_dataset(samples) -> dict[str, int]:
    return dict(sorted(Counter(s.dataset for s in samples).items()))


def _seed(budget: int, epochs: int, seed: int, batch: int, refine: int, data_root: Path,
          cache_root: Path, held_max: int, arms: dict[str, str | None],
          validation: bool = False) -> dict:
    """One seed: draw each arm's subset from the pooled training cases, train and score each.
    arms: name -> the curation `balance` of a curated arm, or None for the random arm (as many
    masks, uniformly from the pool)."""
    from segmote.curation.pipeline import CurationConfig, curate

    torch.set_num_threads(1)
    datasets, pool, held, train_cases = _split(data_root, held_max, validation)
    subsets, rejected = {}, {}
    for name, balance in arms.items():
        if balance is not None:
            result = curate(datasets, CurationConfig(budget=str(budget), seed=seed,
                                                     balance=balance),
                            embedding_cache(None, cache_root),
                            include=lambda s: (s.dataset, s.case_id) in train_cases)
            subsets[name] = [result.candidates[i].sample for i in result.selected]
            rejected = result.reasons()
    size = len(next(iter(subsets.values()))) if subsets else budget
    for name, balance in arms.items():
        if balance is None:
            rng = np.random.default_rng(seed)
            subsets[name] = [pool[i] for i in sorted(rng.choice(len(pool), size, replace=False))]
    cfg = train_config(epochs, batch, refine, seed)
    out: dict = {"seed": seed, "subset_size": size, "curation_rejected": rejected,
                 "masks_per_dataset": {n: _per_dataset(v) for n, v in subsets.items()}}
    part = "mixed_validation" if validation else "mixed"
    for name in arms:
        r = train_and_eval(datasets, subsets[name], held, cfg, cache_root)
        print(f"{part} seed {seed} {name}: {r['steps']} steps in {r['train_s']} s, "
              f"{'validation' if validation else 'held-out'} dataset-mean Dice "
              f"{r['held_out_dataset_mean_dice']} (class mean {r['held_out_class_mean_dice']}) "
              f"{r['per_dataset']}", flush=True)
        out[name] = r
    keep_seed_copy(part, seed, out)
    return out


def _mean_std(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": round(float(v.mean()), 4),
            "std": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0}


def summarize(runs: list[dict], base: dict, pool: int, held: list, config: dict) -> dict:
    """The benchmark's result from the per-seed runs (and the untrained adapter's scores)."""
    from segmote.curation.pipeline import CurationConfig

    default = CurationConfig()
    arms = {}
    for name in ("curated", "random"):
        arms[name] = {
            "dataset_mean_dice": _mean_std([r[name]["held_out_dataset_mean_dice"]
                                            for r in runs]),
            "class_mean_dice": _mean_std([r[name]["held_out_class_mean_dice"] for r in runs]),
            "per_dataset": {d: _mean_std([r[name]["per_dataset"][d] for r in runs])
                            for d in runs[0][name]["per_dataset"]},
            "masks_per_dataset_mean": {
                d: round(float(np.mean([r["masks_per_dataset"][name].get(d, 0) for r in runs])),
                         1) for d in sorted({d for r in runs
                                             for d in r["masks_per_dataset"][name]})},
            "train_s": round(float(np.mean([r[name]["train_s"] for r in runs])), 1),
            "steps": runs[0][name]["steps"]}
    diff = np.array([r["curated"]["held_out_dataset_mean_dice"]
                     - r["random"]["held_out_dataset_mean_dice"] for r in runs])
    diff_cls = np.array([r["curated"]["held_out_class_mean_dice"]
                         - r["random"]["held_out_class_mean_dice"] for r in runs])
    se = (lambda v: round(float(v.std(ddof=1) / np.sqrt(len(v))), 4) if len(v) > 1 else None)
    per_dataset_diff = {d: round(float(np.mean([r["curated"]["per_dataset"][d]
                                                - r["random"]["per_dataset"][d] for r in runs])),
                                 4) for d in runs[0]["curated"]["per_dataset"]}
    return {"curation_config": {"dup_threshold": default.dup_threshold,
                                "mask_threshold": default.mask_threshold},
            "primary_metric": "held-out mean over datasets of the class-mean box-prompt Dice "
                              "(validate's mean_dice)",
            "pool_masks_ge10px": pool, "held_out_masks": len(held),
            "held_out_masks_per_dataset": _per_dataset(held),
            "subset_size": runs[0]["subset_size"], "seeds": [r["seed"] for r in runs],
            "held_out_max_per_dataset": config.pop("held_max"),
            "config": config, "base_model": base, **arms,
            "curated_minus_random_dataset_mean": round(float(diff.mean()), 4),
            "curated_minus_random_dataset_mean_se": se(diff),
            "curated_minus_random_class_mean": round(float(diff_cls.mean()), 4),
            "curated_minus_random_class_mean_se": se(diff_cls),
            "per_dataset_curated_minus_random": per_dataset_diff,
            "per_seed": [{"seed": r["seed"],
                          "curated": r["curated"]["held_out_dataset_mean_dice"],
                          "random": r["random"]["held_out_dataset_mean_dice"],
                          "curated_per_dataset": r["curated"]["per_dataset"],
                          "random_per_dataset": r["random"]["per_dataset"],
                          "masks_per_dataset": r["masks_per_dataset"],
                          "curation_rejected": r["curation_rejected"]} for r in runs]}


def summarize_validation(runs: list[dict], arms: list[str], held: list, config: dict) -> dict:
    """The policy choice's result: per arm, validation Dice mean +- std over seeds."""
    out: dict = {"primary_metric": "validation mean over datasets of the class-mean box-prompt "
                                   "Dice (CT, one training patient, is not scored)",
                 "validation_masks": len(held), "validation_masks_per_dataset": _per_dataset(held),
                 "subset_size": runs[0]["subset_size"], "seeds": [r["seed"] for r in runs],
                 "config": config}
    for name in arms:
        out[name] = {
            "dataset_mean_dice": _mean_std([r[name]["held_out_dataset_mean_dice"] for r in runs]),
            "per_seed": [r[name]["held_out_dataset_mean_dice"] for r in runs],
            "per_dataset": {d: _mean_std([r[name]["per_dataset"][d] for r in runs])
                            for d in runs[0][name]["per_dataset"]},
            "masks_per_dataset_mean": {
                d: round(float(np.mean([r["masks_per_dataset"][name].get(d, 0) for r in runs])),
                         1) for d in sorted({d for r in runs
                                             for d in r["masks_per_dataset"][name]})}}
    return out


def run(budget: int, epochs: int, seeds: list[int], batch: int, refine: int, data_root: Path,
        cache_root: Path, jobs: int, held_max: int, balance: str | None = None,
        validation: bool = False) -> dict:
    """balance: the curated arm's (None: `CurationConfig`'s default)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from segmote.curation.pipeline import CurationConfig
    from segmote.training import distributed as ddp
    from segmote.training.default_adapter import prepare
    from segmote.training.loader import CachedSlices
    from segmote.training.trainer import autocast_for, build_model, validate

    balance = balance or CurationConfig().balance
    prepared = prepare(data_root / "data")
    (data_root / "prepared.json").write_text(json.dumps(
        {"data_dirs": [str(p) for p in prepared.data_dirs], "split": str(prepared.split)}))
    arms: dict[str, str | None] = ({"cell": "cell", "modality": "modality"} if validation
                                   else {"curated": balance, "random": None})
    config = {"epochs": epochs, "batch_size": batch, "lr": 1e-3, "refine_rounds": refine,
              "held_max": held_max, "balance": balance}
    with ProcessPoolExecutor(max(1, min(jobs, len(seeds))),
                             mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(_seed, budget, epochs, s, batch, refine, data_root, cache_root,
                             held_max, arms, validation) for s in seeds]
        _, pool, held, _ = _split(data_root, held_max, validation)
        if validation:
            del config["balance"]
            return summarize_validation([f.result() for f in futures], list(arms), held,
                                        config)
        cfg = train_config(epochs, batch, refine, seeds[0])
        base = build_model(cfg, torch.device("cpu"))  # fresh adapter == the base model's masks
        val = validate(base, CachedSlices(embedding_cache(base, cache_root), held, seeds[0]), 16,
                       ddp.setup("cpu"), autocast_for("none", torch.device("cpu"))[0])
        base_scores = {"dataset_mean_dice": round(float(val["mean_dice"]), 4),
                       "class_mean_dice": round(float(np.mean(list(val["per_class"].values()))),
                                                4),
                       "per_dataset": {k: round(v, 4) for k, v in val["per_dataset"].items()}}
        print(f"base model held-out {base_scores} on {len(held)} masks", flush=True)
        runs = [f.result() for f in futures]
    return summarize(runs, base_scores, len(pool), held, config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=320, help="masks per subset")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs")
    ap.add_argument("--batch", type=int, default=8, help="batch size")
    ap.add_argument("--refine", type=int, default=0, help="refinement rounds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="one run per seed (each draws both subsets and trains both)")
    ap.add_argument("--jobs", type=int, default=3, help="seeds in parallel processes")
    ap.add_argument("--held-max", type=int, default=300,
                    help="held-out masks per dataset, at most (evenly thinned; only AAL has more)")
    ap.add_argument("--balance", default=None, choices=("cell", "modality"),
                    help="the curated arm's `segmote curate --balance` (default: curate's)")
    ap.add_argument("--validation", action="store_true",
                    help="choose the balance on validation cases inside the training pool")
    ap.add_argument("--data", type=Path, default=DATA, help="where the pool is prepared")
    ap.add_argument("--cache", type=Path, default=CACHE,
                    help="embedding cache folder (a default-adapter run's cache can be reused)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.data.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    out = run(args.budget, args.epochs, args.seeds, args.batch, args.refine, args.data,
              args.cache, args.jobs, args.held_max, args.balance, args.validation)
    out["wall_s"] = round(time.perf_counter() - t, 1)
    out["machine"] = machine()
    print(json.dumps({k: v for k, v in out.items() if k != "per_seed"}, indent=1), flush=True)
    # the published "mixed" result is curate's default balance; another balance is stored apart
    from segmote.curation.pipeline import CurationConfig

    part = ("mixed_validation" if args.validation else
            "mixed" if out["config"].get("balance") == CurationConfig().balance else
            f"mixed_balance_{out['config']['balance']}")
    save_part(part, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
