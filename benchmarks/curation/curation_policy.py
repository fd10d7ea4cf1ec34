"""The `policy` part of `bench_curation.py` (issue 7): choosing a curation policy without the
held-out set. Inside the subset benchmark's training pool, block 1 of every 4 blocks of 10
slices is a validation set; each policy draws its subset from the rest, trains an adapter as in
`subset` and is scored on the validation blocks only."""

from __future__ import annotations

import numpy as np
import torch

from curation_common import (embedding_cache, keep_seed_copy, subset_split, train_and_eval,
                             train_config, validation_block)


def _policy_split(held_max: int):
    """(dataset, validation samples, candidate pool): the subset benchmark's training pool cut
    like the held-out split, one block pattern over (validation: block 1, evenly thinned to
    held_max; candidates: the pool slices at least 3 away from any validation slice)."""
    d, _, pool, _ = subset_split(held_max)
    val = [s for s in pool if validation_block(s.slice_index)]
    if len(val) > held_max:
        val = [val[i] for i in np.linspace(0, len(val) - 1, held_max).round().astype(int)]
    cands = [s for s in pool
             if not any(validation_block(s.slice_index + k) for k in range(-2, 3))]
    return d, val, cands


# policy name -> CurationConfig overrides (None: a uniformly random subset of the candidates).
# "curated" is the first default (mask_threshold 0.99: 1 mm stacks thinned); the validation
# numbers of this comparison made 0.999 the default. "temperature" adds balance_power 0.5 (cell
# shares ~ sqrt(cell size), the fix `segmote train`'s default adapter needed when equal dataset
# shares made it memorise its small sets).
POLICIES = {"curated": {"mask_threshold": 0.99}, "dedup_copies_only": {"mask_threshold": 0.999},
            "temperature": {"mask_threshold": 0.999, "balance_power": 0.5}, "random": None}


def _policy_seed(policies: list[str], budget: int, epochs: int, seed: int, batch: int,
                 refine: int, held_max: int) -> dict:
    """One seed of the policy benchmark: each policy's subset trained and scored on the
    validation blocks (never on the held-out set)."""
    from segmote.curation.pipeline import CurationConfig, curate

    torch.set_num_threads(1)
    d, val, cands = _policy_split(held_max)
    keys = {(s.class_name, s.slice_index) for s in cands}
    cfg = train_config(epochs, batch, refine, seed)
    out: dict = {"seed": seed, "validation_masks": len(val), "candidate_masks": len(cands)}
    for name in policies:
        overrides = POLICIES[name]
        if overrides is None:
            rng = np.random.default_rng(seed)
            subset = [cands[i] for i in sorted(rng.choice(len(cands), budget, replace=False))]
        else:
            result = curate([d], CurationConfig(budget=str(budget), seed=seed, **overrides),
                            embedding_cache(), include=lambda s: s.slice_index is not None and (
                                s.class_name, s.slice_index) in keys)
            subset = [result.candidates[i].sample for i in result.selected]
            out[f"{name}_rejected"] = result.reasons()
        r = train_and_eval([d], subset, val, cfg)
        print(f"policy seed {seed} {name}: {len(subset)} masks, {r['steps']} steps in "
              f"{r['train_s']} s, validation class-mean Dice {r['held_out_class_mean_dice']}",
              flush=True)
        out[name] = {"masks": len(subset), "classes": len({s.class_name for s in subset}),
                     "validation_class_mean_dice": r["held_out_class_mean_dice"],
                     "train_s": r["train_s"], "steps": r["steps"]}
    keep_seed_copy("policy", seed, out)
    return out


def bench_policy(policies: list[str], budget: int, epochs: int, seeds: list[int], batch: int,
                 refine: int, held_max: int, jobs: int) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max(1, min(jobs, len(seeds))),
                             mp_context=multiprocessing.get_context("spawn")) as ex:
        runs = list(ex.map(_policy_seed, *zip(*[(policies, budget, epochs, s, batch, refine,
                                                 held_max) for s in seeds])))
    summary = {}
    for name in policies:
        v = np.array([r[name]["validation_class_mean_dice"] for r in runs])
        summary[name] = {"mean": round(float(v.mean()), 4),
                         "std": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0,
                         "per_seed": v.round(4).tolist()}
    return {"policies": {k: POLICIES[k] for k in policies}, "budget": budget, "seeds": seeds,
            "validation_masks": runs[0]["validation_masks"],
            "candidate_masks": runs[0]["candidate_masks"],
            "config": {"epochs": epochs, "batch_size": batch, "lr": 1e-3,
                       "refine_rounds": refine},
            "validation_class_mean_dice": summary, "per_seed": runs}
