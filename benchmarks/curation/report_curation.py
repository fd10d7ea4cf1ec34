"""The curation sections of docs/benchmarks.md (issue 7), from benchmarks/results/curation.json:
planted bad samples, speed, curated vs random subsets, the heterogeneous and the noisy pool.
Called by benchmarks/run.py."""

from __future__ import annotations

from common import machine_line


# the parts that train adapters (planted and speed train none)
TRAINING_PARTS = ("policy", "subset", "mixed_validation", "mixed_balance_cell", "mixed", "noisy")


def trainer_note(r: dict) -> list[str]:
    """Which parts' adapters came from `fit()` and which from the benchmarks' earlier own loop
    (results without "trainer": "fit", stored before the move)."""
    old = [p for p in TRAINING_PARTS if r.get(p) and r[p].get("trainer") != "fit"]
    new = [p for p in TRAINING_PARTS if r.get(p) and r[p].get("trainer") == "fit"]
    if not old:
        return []
    return [("Trainer: the adapters of " + ", ".join(f"`{p}`" for p in new) +
             " were trained by `segmote.training.trainer.fit` (the trainer of `segmote train`); "
             if new else "Trainer: these benchmarks now train through "
             "`segmote.training.trainer.fit` (the trainer of `segmote train`), but ") +
            "**the numbers of " + ", ".join(f"`{p}`" for p in old) + " below were produced by "
            "the benchmarks' own earlier training loop** (`benchmarks/curation_common.py`, "
            "`train_and_eval`, last at commit e2b33b6) and have not been rerun on `fit()`. The "
            "protocol is the same (config, seed, adapter init, batch order, prompts; fit() "
            "reproduced the old loop's held-out Dice exactly in a 3-step check once the old "
            "per-step torch seed was patched in) except the router noise, which the old loop "
            "seeded with seed x 100003 + step and fit() with a key of (seed, step, rank): a "
            "rerun gives other numbers. `planted` and `speed` train nothing.", ""]


def section_curation(r: dict) -> list[str]:
    out = ["## Curation (issue 7)", "", *trainer_note(r)]
    p = r.get("planted")
    if p:
        out += [f"Planted bad samples on real Colin27 T1 slices + AAL masks (2-D PNG dataset; "
                f"{machine_line(p.get('machine'))}):", "",
                "| kind | planted | rejected | reason |", "|---|---|---|---|"]
        for kind, k in p["per_kind"].items():
            out.append(f"| {kind} | {k['planted']} | {k['rejected']} | "
                       f"{', '.join(k['reasons'])} |")
        out += ["", "| target | measured | met |", "|---|---|---|",
                f"| planted bad samples rejected >= 95 % | {p['planted_rejected']}/"
                f"{p['planted_masks']} ({p['planted_rejected_pct']:.1f} %) | "
                f"{'yes' if p['planted_rejected_pct'] >= 95 else 'no'} |",
                f"| clean samples rejected <= 2 % | {p['clean_rejected']}/{p['clean_masks']} "
                f"({p['clean_rejected_pct']:.2f} %) | "
                f"{'yes' if p['clean_rejected_pct'] <= 2 else 'no'} |",
                f"| at most one of each duplicate group selected | "
                f"{p['groups_with_more_than_one_selected']} of {p['duplicate_groups']} groups "
                f"with more | {'yes' if p['groups_with_more_than_one_selected'] == 0 else 'no'} |"]
    s = r.get("speed")
    if s:
        out += [f"| 10,000 masks curated in < 10 min, embeddings cached | {s['masks']:,} masks:"
                f" {s['cached_cpu_s']:.0f} s CPU ({s['cached_wall_s']:.0f} s wall on a shared, "
                f"busy machine) | {'yes' if s['cached_wall_s'] < 600 else 'no'} |",
                f"| the same, uncached (report) | + {s['embedded_slices']} slices to encode: "
                f"~{s['uncached_wall_s_idle_estimate'] / 60:.0f} min at the idle encoder speed "
                f"| report |"]
    pol = r.get("policy")
    if pol:
        v = pol["validation_class_mean_dice"]
        out += ["", f"Choosing the curation policy without the held-out set (`policy`): inside the "
                f"training pool, block 1 of every 4 blocks of 10 slices is a validation set "
                f"(n = {pol['validation_masks']} masks), the rest the candidate pool "
                f"({pol['candidate_masks']} masks); {pol['budget']} masks per policy, "
                f"{pol['config']['epochs']} epochs of batch {pol['config']['batch_size']}, seeds "
                f"{', '.join(map(str, pol['seeds']))}; validation box-prompt class-mean Dice, "
                f"mean ± std over seeds ({machine_line(pol.get('machine'))}):", "",
                "| policy | settings | validation Dice | per seed |", "|---|---|---|---|"]
        for name, res in v.items():
            cfg = pol["policies"][name]
            what = "uniform random draw" if cfg is None else (
                ", ".join(f"{k} {x}" for k, x in cfg.items()) or "defaults")
            out.append(f"| {name} | {what} | {res['mean']:.3f} ± {res['std']:.3f} | "
                       f"{' / '.join(f'{x:.3f}' for x in res['per_seed'])} |")
    b = r.get("subset")
    if b:
        c = b["config"]
        diff = b["curated_minus_random_mean"]
        seeds = b.get("seeds", [c["seed"]])
        n = len(seeds)
        se = b.get("curated_minus_random_se")

        def arm(a: dict) -> str:
            std = a.get("held_out_class_mean_dice_std")
            return f"{a['held_out_class_mean_dice']:.3f}" + (
                f" ± {std:.3f}" if std is not None and n > 1 else "")

        cc = b.get("curation_config") or {}
        out += ["", f"Curated vs random subset of the same size ({b['subset_size']} masks each, "
                + (f"curation with dup_threshold {cc['dup_threshold']}, mask_threshold "
                   f"{cc['mask_threshold']}; " if cc else "") +
                f"Colin27 AAL axial; held-out: every 4th block of 10 slices with a 2-slice gap, "
                f"n = {b['held_out_masks']} masks, {b['held_out_classes']} classes; adapter "
                f"trained {b['curated']['steps']} steps, batch {c['batch_size']}, lr {c['lr']}, "
                f"{c['refine_rounds']} refinement rounds; {n} seed{'s' if n > 1 else ''} "
                f"({', '.join(map(str, seeds))}): each seed draws both subsets and trains both "
                f"adapters; box-prompt Dice, class mean, mean ± std over seeds; "
                f"{machine_line(b.get('machine'))}):",
                "", "| training set | held-out class-mean Dice |", "|---|---|",
                f"| none (base LiteMedSAM) | {b['base_model_class_mean_dice']:.3f} |",
                f"| random subset ({b['random_classes']:g} classes) | {arm(b['random'])} |",
                f"| curated subset ({b['curated_classes']:g} classes) | {arm(b['curated'])} |"]
        if b.get("per_seed"):
            out += ["", "| seed | curated | random | curated - random |", "|---|---|---|---|"]
            out += [f"| {q['seed']} | {q['curated']:.3f} | {q['random']:.3f} | "
                    f"{q['curated_minus_random']:+.3f} |" for q in b["per_seed"]]
        pc = b.get("per_class_curated_minus_random")
        out += ["", f"Curated minus random: {diff:+.3f}"
                + (f" (mean over {n} seeds, standard error over seeds {se:.3f})"
                   if n > 1 and se is not None else
                   f" (paired over {b['paired_classes']} classes, standard error "
                   f"{b['curated_minus_random_se']:.3f})")
                + (f"; per class, averaged over seeds: {pc['mean']:+.3f} ± {pc['se']:.3f} SE "
                   f"over {pc['classes']} classes, curated better on {pc['classes_curated_better']}"
                   f", random on {pc['classes_random_better']}" if pc else "") + ". "
                + (f"The curated mean is above random by {diff / se:.1f} standard errors over "
                   f"seeds." if diff > 0 and n > 1 and se and diff >= 2 * se else
                   "The curated mean is not below random on this benchmark" + (
                    f" (within {abs(diff) / se:.1f} standard errors of 0: no difference shown "
                    f"either way)" if n > 1 and se else "") + "." if diff >= 0 else
                   "**The target (curated not worse) is not met**: the curated mean is below "
                   "random, though within 2 standard errors over seeds (no significant "
                   "difference either way); see docs/curation.md."
                   if n > 1 and se is not None and diff + 2 * se >= 0 else
                   "**The target (curated not worse) is not met** on this data: see "
                   "docs/curation.md for what this measures and why.")]
    if r.get("mixed_validation"):
        out += section_curation_mixed_validation(r["mixed_validation"])
    if r.get("mixed_balance_cell"):
        out += section_curation_mixed(r["mixed_balance_cell"], current=False)
    if r.get("mixed"):
        out += section_curation_mixed(r["mixed"])
    if r.get("noisy"):
        out += section_curation_noisy(r["noisy"])
    return out + [""]


def section_curation_noisy(m: dict) -> list[str]:
    """Curated vs random from an AAL pool with planted label noise, scored on clean data."""
    c, n, kinds = m["config"], len(m["seeds"]), m["kinds"]
    cor = m["corruption"]
    out = ["", f"Curated vs random subset from a pool with label noise "
           f"(`bench_curation_noisy.py`): the `subset` experiment (AAL axial, same held-out "
           f"blocks, n = {m['held_out_masks']} clean masks) with "
           f"{sum(m['pool_corrupted'].values())} of the pool's masks ({m['noise']:.0%}) "
           f"corrupted, in equal shares: shredded (1-px grid every 3 px removed), salt "
           f"({cor['salt_share']:.0%} of the background set to the class), dilated by "
           f"{cor['dilate_px']} px, shifted {cor['shift_px']} px. {m['subset_size']} masks per "
           f"subset, {c['epochs']} epoch of batch {c['batch_size']}, {n} seeds; held-out "
           f"box-prompt class-mean Dice, mean ± std over seeds ({machine_line(m.get('machine'))}). "
           "The quality rules look for fragments and isolated pixels; nothing in them can see "
           "a dilated or shifted region. Mask counts: per subset, mean over seeds.", "",
           "| training set | held-out Dice | clean masks | " + " | ".join(kinds) + " |",
           "|---|---|---|" + "---|" * len(kinds)]
    for a in ("random", "curated"):
        k = m[a]["subset_kinds_mean"]
        out.append(f"| {a} subset | {m[a]['held_out_class_mean_dice']:.3f} ± "
                   f"{m[a]['held_out_class_mean_dice_std']:.3f} | {k['clean']:g} | "
                   + " | ".join(f"{k[x]:g}" for x in kinds) + " |")
    diff, se = m["curated_minus_random_mean"], m["curated_minus_random_se"]
    out += ["", f"Curated minus random: {diff:+.3f}"
            + (f" (SE over {n} seeds {se:.3f})" if se is not None else "") + "; per seed "
            + ", ".join(f"{a - b:+.3f}" for a, b in zip(m["curated"]["per_seed"],
                                                        m["random"]["per_seed"])) + ". "
            + ("" if se is None else
               "Within one standard error: no difference shown either way." if abs(diff) < se
               else f"The curated mean is above random by {diff / se:.1f} standard errors over "
               "seeds." if diff >= 2 * se else
               f"{abs(diff) / se:.1f} standard errors from 0: not shown either way.")]
    return out


# the mixed pool's datasets, as the tables name them (held-out part in brackets)
SHORT = {"Dataset001_PyradiomicsCT": "CT tumour (unseen patient)",
         "Dataset002_PyradiomicsMR": "MR tumour (unseen patient)",
         "Dataset005_NucleiQuadrants": "nuclei (held-out quadrant)",
         "Dataset006_Colin27AALSlabs": "AAL structures (held-out slabs)",
         "Dataset007_Colin27BrainSlabs": "brain mask (held-out slabs)"}


def section_curation_mixed_validation(m: dict) -> list[str]:
    """Choosing `--balance` on validation cases inside the heterogeneous pool's training cases."""
    c, n = m["config"], len(m["seeds"])
    arms = [a for a in ("cell", "modality") if a in m]
    names = sorted(m["validation_masks_per_dataset"])
    out = ["", f"Choosing the balance without the held-out set (`bench_curation_mixed.py "
           f"--validation`): inside the heterogeneous pool's training cases, the middle training "
           f"case of each dataset with two or more is the validation set (n = "
           f"{m['validation_masks']} masks; CT, one training patient, stays in the pool and is "
           f"not scored); {m['subset_size']} masks per subset, {c['epochs']} epoch of batch "
           f"{c['batch_size']}; seeds {', '.join(map(str, m['seeds']))}; validation box-prompt "
           f"Dice, mean ± std over {n} seeds ({machine_line(m.get('machine'))}). Rule fixed "
           "before the run: `--balance modality` becomes the default if its mean over datasets "
           "beats `cell`'s.", "",
           "| balance | " + " | ".join(f"{SHORT.get(d, d).split(' (')[0]} (n = "
                                      f"{m['validation_masks_per_dataset'][d]})" for d in names)
           + " | **mean over datasets** | per seed | masks per dataset |",
           "|---|" + "---|" * (len(names) + 3)]
    for a in arms:
        x = m[a]
        out.append(f"| {a} | " + " | ".join(f"{x['per_dataset'][d]['mean']:.3f}" for d in names)
                   + f" | {x['dataset_mean_dice']['mean']:.3f} ± "
                     f"{x['dataset_mean_dice']['std']:.3f} | "
                   + " / ".join(f"{v:.3f}" for v in x["per_seed"]) + " | "
                   + ", ".join(f"{SHORT.get(d, d).split(' (')[0]} {k:g}"
                               for d, k in x["masks_per_dataset_mean"].items()) + " |")
    return out


def section_curation_mixed(m: dict, current: bool = True) -> list[str]:
    """The curated vs random comparison on the default adapter's five pooled datasets.
    current: False for a run with a setting that is no longer the default."""
    c, n = m["config"], len(m["seeds"])
    out = ["", ("" if current else "Before: ")
           + f"Curated vs random subset on a heterogeneous pool (`bench_curation_mixed.py`): "
           f"the training cases of the default adapter's five datasets "
           f"({m['pool_masks_ge10px']:,} masks of >= 10 px), {m['subset_size']} masks per "
           f"subset; held-out: the default adapter's split (unseen CT and MR tumour patients, "
           f"the held-out nuclei quadrant, held-out Colin27 slabs), masks of >= 20 px, at most "
           f"{m['held_out_max_per_dataset']} per dataset; curated with `--balance "
           f"{c.get('balance', 'cell')}`; adapter trained "
           f"{m['curated']['steps']} steps of batch {c['batch_size']}, lr {c['lr']}; {n} seeds "
           f"({', '.join(map(str, m['seeds']))}); box-prompt Dice, mean ± std over seeds "
           f"({machine_line(m.get('machine'))}). Primary metric, fixed before the run: the mean "
           f"over datasets of their class-mean Dice.", "",
           "| held-out set | n | base model | random subset (masks) | curated subset (masks) "
           "| curated - random |", "|---|---|---|---|---|---|"]

    def arm(a: dict, d: str) -> str:
        x = a["per_dataset"][d]
        return (f"{x['mean']:.3f} ± {x['std']:.3f} "
                f"({a['masks_per_dataset_mean'].get(d, 0):g})")

    for d, k in m["held_out_masks_per_dataset"].items():
        out.append(f"| {SHORT.get(d, d)} | {k} | {m['base_model']['per_dataset'][d]:.3f} | "
                   f"{arm(m['random'], d)} | {arm(m['curated'], d)} | "
                   f"{m['per_dataset_curated_minus_random'][d]:+.3f} |")
    for key, label, diff in (("dataset_mean_dice", "**mean over datasets** (primary)",
                              "dataset_mean"),
                             ("class_mean_dice", "mean over (dataset, class) pairs",
                              "class_mean")):
        r_, c_ = m["random"][key], m["curated"][key]
        se = m[f"curated_minus_random_{diff}_se"]
        out.append(f"| {label} | {sum(m['held_out_masks_per_dataset'].values())} | "
                   f"{m['base_model'][key]:.3f} | {r_['mean']:.3f} ± {r_['std']:.3f} | "
                   f"{c_['mean']:.3f} ± {c_['std']:.3f} | "
                   f"{m[f'curated_minus_random_{diff}']:+.3f}"
                   + (f" (SE {se:.3f})" if se is not None else "") + " |")
    out += ["", "| seed | curated | random | curated - random |", "|---|---|---|---|"]
    out += [f"| {q['seed']} | {q['curated']:.3f} | {q['random']:.3f} | "
            f"{q['curated'] - q['random']:+.3f} |" for q in m["per_seed"]]
    diff, se = m["curated_minus_random_dataset_mean"], m["curated_minus_random_dataset_mean_se"]
    out += ["", f"Curated minus random on the primary metric: {diff:+.3f}"
            + (f" (SE over {n} seeds {se:.3f})" if se is not None else "") + ". "
            + (("The target (curated not worse) is met on this pool." if diff >= 0 else
                "**The target (curated not worse) is not met on this pool.**") if current else
               f"This was the first default (`--balance {c.get('balance', 'cell')}`); it is no "
               "longer the default.")]
    return out
