"""Curation benchmarks (issue 7), on real data (Colin27 T1 + AAL atlas) with the real LiteMedSAM
encoder; writes benchmarks/results/curation.json (each part updates its own key).

    python benchmarks/curation/bench_curation.py planted  # planted bad samples: rejected?
    python benchmarks/curation/bench_curation.py speed    # >= 10,000 masks, embeddings cached
    python benchmarks/curation/bench_curation.py subset   # curated vs random subset, same size

planted: a 2-D PNG dataset cut from AAL axial slices (MR, 8-bit, volume 0.5/99.5 percentiles).
    Clean: CLEAN_SLICES slices 8 mm apart with every AAL region of >= 10 px (smaller regions are
    not training samples for `segmote train` either). Planted, PER_KIND of each kind, one mask
    each, on real slice images: empty label map, a single pixel, a region shredded by a 1-px
    grid every 3 px, salt noise (2 % of the plane), an inverted region, a real region on a blank
    (constant) image. Duplicates: DUP_SLICES clean slices again as an exact copy, a copy 2 grey
    levels brighter and a copy with Gaussian noise (sigma 2 grey levels), same labels; every
    (slice, region) is a group of 4 of which at most one may be selected.
speed: AAL (--axes, default axial + coronal; --copies N: N cases linking the one volume, so
    they share cached entries) + the planted set: scored, de-duplicated and selected (budget
    10 %) in one run, embeddings already cached; the uncached time adds the measured encoder
    time per slice of the cache build (`EmbeddingCache.build`, same machine) x the slices.
subset: AAL axial; every 4th block of 10 slices is held out (with a 2-slice gap on each side;
    --held-max thins it evenly, default 300 masks); from the other slices a curated subset and a
    uniformly random subset (masks of >= 10 px, the trainer's own rule) of the same size are
    drawn; an adapter is trained on each with the same config and steps; held-out box-prompt
    Dice (mask resolution, class mean) is compared. Repeated for each of --seeds (default 0 1 2;
    the seed drives the curation draw, the random draw, the adapter init and the batch order;
    seeds run in --jobs parallel processes of one torch thread). Reported: mean and std over
    seeds, the paired curated - random difference per seed (and its SE over seeds), the
    per-class difference averaged over seeds, and what each subset holds vs the held-out set
    (classes, masks per class, mask sizes, slice position within each region's axial extent,
    quality scores). The held-out set chooses nothing: it is only evaluated.
policy: choosing a curation policy without the held-out set. Inside the subset benchmark's
    training pool, block 1 of every 4 blocks of 10 slices (2-slice gaps) is a validation set
    and the rest of the pool is the candidate pool; each --policies entry (default: the default
    curation, de-duplication of exact-mask copies only, and a random subset) draws --budget
    masks, trains an adapter as in `subset`, and is scored on the validation set. Only these
    numbers may choose a policy for `subset`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# this folder (the curation modules) and benchmarks/ (common.py)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from common import RESULTS, machine  # noqa: E402
from curation_common import (CACHE, aal_root, embedding_cache, keep_seed_copy,  # noqa: E402
                             save_part, subset_split, train_and_eval, train_config,
                             train_pool)
from curation_planted import CLEAN_SLICES, DUP_SLICES, KINDS, write_planted  # noqa: E402
from curation_policy import POLICIES, bench_policy  # noqa: E402


# ------------------------------------------------------------------ planted

def bench_planted(workdir: Path) -> dict:
    from segmote.curation.pipeline import CurationConfig, curate
    from segmote.data.datasets import discover

    root = workdir / "AALPlanted"
    truth = write_planted(root)
    t = time.perf_counter()
    result = curate(discover([root]), CurationConfig(budget="100%"), embedding_cache())
    wall = time.perf_counter() - t
    cands = result.candidates
    selected = set(result.selected)
    per_kind: dict[str, dict] = {k: {"planted": 0, "rejected": 0, "reasons": {}} for k in KINDS}
    clean = {"masks": 0, "rejected": 0, "reasons": {}}
    groups: dict[tuple[int, str], list[int]] = {}
    for i, c in enumerate(cands):
        case = c.sample.case_id
        if case.startswith("bad_"):
            kind = truth[case]["kind"]
            if c.sample.class_value not in (0, truth[case]["value"]):
                continue
            per_kind[kind]["planted"] += 1
            if c.reason is not None:
                per_kind[kind]["rejected"] += 1
                per_kind[kind]["reasons"][c.reason] = per_kind[kind]["reasons"].get(c.reason,
                                                                                    0) + 1
        elif case.startswith("clean_") or case.startswith("dup_"):
            z = int(case.split("_z")[1][:3])
            if z in DUP_SLICES:
                groups.setdefault((z, c.sample.class_name), []).append(i)
            if case.startswith("clean_"):
                clean["masks"] += 1
                # dropping a clean mask as a copy of its own planted duplicate is expected
                own_copy = c.reason == "duplicate" and z in DUP_SLICES and \
                    f"_z{z:03d}" in cands[c.duplicate_of].sample.case_id
                if c.reason is not None and not own_copy:
                    clean["rejected"] += 1
                    clean["reasons"][c.reason] = clean["reasons"].get(c.reason, 0) + 1
    planted = sum(k["planted"] for k in per_kind.values())
    rejected = sum(k["rejected"] for k in per_kind.values())
    multi = sum(len([i for i in g if i in selected]) > 1 for g in groups.values())
    return {"clean_slices": CLEAN_SLICES, "per_kind": per_kind,
            "planted_masks": planted, "planted_rejected": rejected,
            "planted_rejected_pct": round(100 * rejected / planted, 2),
            "clean_masks": clean["masks"], "clean_rejected": clean["rejected"],
            "clean_rejected_pct": round(100 * clean["rejected"] / clean["masks"], 2),
            "clean_rejected_reasons": clean["reasons"],
            "duplicate_groups": len(groups), "groups_with_more_than_one_selected": multi,
            "duplicates_rejected": sum(c.reason == "duplicate" for c in cands),
            "wall_s": round(wall, 1), "timings_s": result.summary()["timings_s"]}


# ------------------------------------------------------------------ speed

def _aal_copies(root: Path, copies: int) -> Path:
    """An nnU-Net folder whose `copies` cases all link to the AAL image and label: identical
    content, so they share the cached embeddings (the cache is keyed by content)."""
    src = aal_root()
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for n in range(copies):
        (root / "imagesTr" / f"copy{n}_0000.nii.gz").symlink_to(
            src / "imagesTr" / "colin27_0000.nii.gz")
        (root / "labelsTr" / f"copy{n}.nii.gz").symlink_to(src / "labelsTr" / "colin27.nii.gz")
    meta = json.loads((src / "dataset.json").read_text())
    meta.pop("patient_of_case", None)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def bench_speed(workdir: Path, axes: list[int], copies: int) -> dict:
    from segmote.curation.pipeline import CurationConfig, curate
    from segmote.data.datasets import discover

    planted = workdir / "AALPlanted"
    if not planted.is_dir():
        write_planted(planted)
    aal = aal_root() if copies <= 1 else _aal_copies(workdir / "AALCopies", copies)
    datasets = discover([aal, planted])
    cache = embedding_cache()
    t, cpu = time.perf_counter(), time.process_time()
    result = curate(datasets, CurationConfig(budget="10%", axes=axes), cache)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    s = result.summary()
    new = s["timings_s"].get("embed_new_slices", 0)
    slices = len({(str(Path(c.sample.image).resolve()), c.sample.slice_index, c.sample.axis)
                  for c in result.candidates if c.reason is None or c.reason == "duplicate"})
    builds = [json.loads(p.read_text()) for p in sorted(CACHE.parent.glob("aal_build*.json"))]
    enc_s = sum(b["seconds"] for b in builds) / max(1, sum(b["built"] for b in builds))
    predict = RESULTS / "predict.json"  # the idle-machine encoder time of bench_predict
    idle_s = None
    if predict.is_file():
        idle_s = _find(json.loads(predict.read_text()), "encoder_ms")
        idle_s = idle_s / 1000 if idle_s is not None else None
    return {"masks": s["candidates"], "aal_axes": axes, "aal_copies": copies,
            "encoder_s_per_slice_idle": idle_s,
            "uncached_wall_s_idle_estimate": None if idle_s is None else
            round(wall + slices * idle_s, 1),
            "embedded_slices": slices,
            "slices_encoded_during_run": new, "cached_wall_s": round(wall, 1),
            "cached_cpu_s": round(cpu, 1),
            "timings_s": s["timings_s"], "selected": s["selected"],
            "rejected_by_reason": s["rejected_by_reason"],
            "encoder_s_per_slice_measured": round(enc_s, 2),
            "uncached_wall_s_estimate": round(wall + slices * enc_s, 1),
            "note": "uncached = this cached run + the measured per-slice encoder time of the "
                    "cache build (EmbeddingCache.build on this machine, niced, while another "
                    "training job ran) x the slices embedded"}


def _find(obj, key: str):
    """The first value of `key` in nested dicts (depth first), or None."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------ curated vs random

def _composition(subset, every, quality: dict) -> dict:
    """What a set of samples holds: classes, masks per class, mask sizes, slice position
    relative to the class's axial extent (centrality 1 = middle, 0 = first/last slice), and
    the curation quality score (where the sample was scored)."""
    ext: dict[str, tuple[int, int, int]] = {}
    for s in every:
        lo, hi, mx = ext.get(s.class_name, (10 ** 9, -1, 0))
        ext[s.class_name] = (min(lo, s.slice_index), max(hi, s.slice_index),
                             max(mx, s.foreground))
    per_class: dict[str, int] = {}
    for s in subset:
        per_class[s.class_name] = per_class.get(s.class_name, 0) + 1
    px = np.array([s.foreground for s in subset], float)
    cen = np.array([1.0 if ext[s.class_name][1] == ext[s.class_name][0] else
                    1 - 2 * abs((s.slice_index - ext[s.class_name][0])
                                / (ext[s.class_name][1] - ext[s.class_name][0]) - 0.5)
                    for s in subset])
    rel = np.array([s.foreground / ext[s.class_name][2] for s in subset])
    q = np.array([quality[(s.class_name, s.slice_index)] for s in subset
                  if (s.class_name, s.slice_index) in quality])
    return {"masks": len(subset), "classes": len(per_class),
            "masks_per_class_median": float(np.median(list(per_class.values()))),
            "masks_per_class_max": max(per_class.values()),
            "pixels_median": float(np.median(px)), "pixels_p25": float(np.percentile(px, 25)),
            "share_under_100px": round(float(np.mean(px < 100)), 3),
            "size_vs_class_max_median": round(float(np.median(rel)), 3),
            "centrality_mean": round(float(cen.mean()), 3),
            "share_edge_slices": round(float(np.mean(cen < 0.25)), 3),
            "quality_mean": round(float(q.mean()), 4) if len(q) else None,
            "share_quality_1": round(float(np.mean(q >= 0.999)), 3) if len(q) else None}


def _subset_seed(budget: int, epochs: int, seed: int, batch: int, refine: int,
                 held_max: int) -> dict:
    """One seed of the subset benchmark: draw both subsets, train and evaluate both adapters."""
    from segmote.curation.pipeline import CurationConfig, curate

    torch.set_num_threads(1)
    d, held, pool, every = subset_split(held_max)
    result = curate([d], CurationConfig(budget=str(budget), seed=seed), embedding_cache(),
                    include=lambda s: s.slice_index is not None and train_pool(s.slice_index))
    curated = [result.candidates[i].sample for i in result.selected]
    quality = {(c.sample.class_name, c.sample.slice_index): c.quality
               for c in result.candidates}
    rng = np.random.default_rng(seed)
    random_subset = [pool[i] for i in sorted(rng.choice(len(pool), len(curated), replace=False))]
    cfg = train_config(epochs, batch, refine, seed)
    out: dict = {"seed": seed, "subset_size": len(curated),
                 "curation_rejected": result.reasons(),
                 "composition": {"held_out": _composition(held, every, quality),
                                 "pool": _composition(pool, every, quality),
                                 "curated": _composition(curated, every, quality),
                                 "random": _composition(random_subset, every, quality)}}
    for name, subset in (("curated", curated), ("random", random_subset)):
        r = train_and_eval([d], subset, held, cfg)
        print(f"seed {seed} {name}: {r['steps']} steps in {r['train_s']} s, held-out class-mean"
              f" Dice {r['held_out_class_mean_dice']}", flush=True)
        out[name] = r
    c, r = out["curated"]["per_class"], out["random"]["per_class"]
    common = sorted(set(c) & set(r))
    diff = np.array([c[k] - r[k] for k in common])
    out["paired_classes"] = len(common)
    out["curated_minus_random_mean"] = round(float(diff.mean()), 4)
    out["curated_minus_random_se_over_classes"] = round(
        float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)
    keep_seed_copy("subset", seed, out)
    return out


def bench_subset(budget: int, epochs: int, seeds: list[int], batch: int, refine: int,
                 held_max: int, jobs: int) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from segmote.training import distributed as ddp
    from segmote.training.loader import CachedSlices
    from segmote.training.trainer import autocast_for, build_model, validate

    with ProcessPoolExecutor(max(1, min(jobs, len(seeds))),
                             mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(_subset_seed, budget, epochs, s, batch, refine, held_max)
                   for s in seeds]
        _, held, pool, _ = subset_split(held_max)
        cfg = train_config(epochs, batch, refine, seeds[0])
        info = ddp.setup("cpu")
        base = build_model(cfg, torch.device("cpu"))  # fresh adapter == the base model's masks
        base_val = validate(base, CachedSlices(embedding_cache(base), held, seeds[0]), 16, info,
                            autocast_for("none", torch.device("cpu"))[0])
        base_dice = round(float(np.mean(list(base_val["per_class"].values()))), 4)
        print(f"base model held-out class-mean Dice {base_dice} on {len(held)} masks", flush=True)
        runs = [f.result() for f in futures]

    def ms(values) -> dict:
        v = np.asarray(values, float)
        return {"mean": round(float(v.mean()), 4),
                "std": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0}

    arms = {}
    for name in ("curated", "random"):
        dice = [r[name]["held_out_class_mean_dice"] for r in runs]
        arms[name] = {"steps": runs[0][name]["steps"],
                      "train_s": round(float(np.mean([r[name]["train_s"] for r in runs])), 1),
                      "held_out_class_mean_dice": round(float(np.mean(dice)), 4),
                      "held_out_class_mean_dice_std": ms(dice)["std"]}
    diffs = np.array([r["curated"]["held_out_class_mean_dice"]
                      - r["random"]["held_out_class_mean_dice"] for r in runs])
    # per class: the curated - random difference averaged over seeds
    classes = sorted(set.intersection(*[set(r["curated"]["per_class"]) & set(
        r["random"]["per_class"]) for r in runs]))
    per_class_diff = {k: round(float(np.mean([r["curated"]["per_class"][k]
                                              - r["random"]["per_class"][k] for r in runs])), 4)
                      for k in classes}
    pcd = np.array(list(per_class_diff.values()))
    comp_keys = ("curated", "random")
    from segmote.curation.pipeline import CurationConfig

    default = CurationConfig()
    out = {"curation_config": {"dup_threshold": default.dup_threshold,
                               "mask_threshold": default.mask_threshold},
           "held_out_masks": len(held), "held_out_classes": len(base_val["per_class"]),
           "pool_masks_ge10px": len(pool), "subset_size": runs[0]["subset_size"],
           "seeds": seeds,
           "config": {"epochs": epochs, "batch_size": batch, "lr": 1e-3,
                      "refine_rounds": refine, "seed": seeds},
           "base_model_class_mean_dice": base_dice,
           "curated_classes": round(float(np.mean([r["composition"]["curated"]["classes"]
                                                   for r in runs])), 1),
           "random_classes": round(float(np.mean([r["composition"]["random"]["classes"]
                                                  for r in runs])), 1),
           **arms,
           "paired_classes": len(classes),
           # means over seeds; the SE is that of the per-seed differences (seed = the unit)
           "curated_minus_random_mean": round(float(diffs.mean()), 4),
           "curated_minus_random_std": round(float(diffs.std(ddof=1)), 4) if len(runs) > 1
           else 0.0,
           "curated_minus_random_se": round(float(diffs.std(ddof=1) / np.sqrt(len(diffs))), 4)
           if len(runs) > 1 else None,
           "per_class_curated_minus_random": {
               "classes": len(pcd), "mean": round(float(pcd.mean()), 4),
               "se": round(float(pcd.std(ddof=1) / np.sqrt(len(pcd))), 4),
               "classes_curated_better": int((pcd > 0).sum()),
               "classes_random_better": int((pcd < 0).sum()),
               "per_class": per_class_diff},
           "per_seed": [{"seed": r["seed"], "curated": r["curated"]["held_out_class_mean_dice"],
                         "random": r["random"]["held_out_class_mean_dice"],
                         "curated_minus_random": round(r["curated"]["held_out_class_mean_dice"]
                                                       - r["random"]["held_out_class_mean_dice"],
                                                       4),
                         "paired_classes": r["paired_classes"],
                         "curated_minus_random_se_over_classes":
                             r["curated_minus_random_se_over_classes"],
                         "curated_train_s": r["curated"]["train_s"],
                         "random_train_s": r["random"]["train_s"],
                         "curation_rejected": r["curation_rejected"],
                         "composition": {k: r["composition"][k] for k in comp_keys}}
                        for r in runs],
           "composition": {"held_out": runs[0]["composition"]["held_out"],
                           "pool": runs[0]["composition"]["pool"]},
           "per_seed_per_class": [{"seed": r["seed"], "curated": r["curated"]["per_class"],
                                   "random": r["random"]["per_class"]} for r in runs]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=("planted", "speed", "subset", "policy"))
    ap.add_argument("--policies", nargs="+", choices=tuple(POLICIES), default=list(POLICIES),
                    help="policy: the curation policies compared on the validation blocks")
    ap.add_argument("--budget", type=int, default=320, help="subset: masks per subset")
    ap.add_argument("--epochs", type=int, default=2, help="subset: training epochs")
    ap.add_argument("--batch", type=int, default=8, help="subset: batch size")
    ap.add_argument("--refine", type=int, default=1, help="subset: refinement rounds")
    ap.add_argument("--held-max", type=int, default=300, help="subset: held-out masks cap")
    ap.add_argument("--seed", type=int, default=0, help="unused (kept for compatibility; subset: --seeds)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="subset: one run per seed (each draws both subsets, trains both)")
    ap.add_argument("--jobs", type=int, default=3,
                    help="subset: seeds run in parallel processes (1 torch thread each)")
    ap.add_argument("--axes", type=int, nargs="+", default=[2, 1], help="speed: AAL axes")
    ap.add_argument("--copies", type=int, default=1,
                    help="speed: AAL cases, all links to the one volume (shared cache entries)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="segmote-curation-") as tmp:
        for part in args.parts:
            t = time.perf_counter()
            if part == "planted":
                out = bench_planted(Path(tmp))
            elif part == "speed":
                out = bench_speed(Path(tmp), args.axes, args.copies)
            elif part == "policy":
                out = bench_policy(args.policies, args.budget, args.epochs, args.seeds,
                                   args.batch, args.refine, args.held_max, args.jobs)
            else:
                out = bench_subset(args.budget, args.epochs, args.seeds, args.batch,
                                   args.refine, args.held_max, args.jobs)
            out["machine"] = machine()
            print(part, json.dumps({k: v for k, v in out.items()
                                    if not k.endswith("per_class") and not k.startswith("per_")
                                    and k not in ("per_seed", "composition")}, indent=1),
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
            save_part(part, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
