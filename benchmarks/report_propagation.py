"""The 3-D propagation section of docs/benchmarks.md (issue 23), from
benchmarks/results/propagation.json and its side results (propagation_choice.json: the choice on
validation objects; propagation_time.json: a typical tumour case). Called by benchmarks/run.py."""

from __future__ import annotations

import numpy as np

from common import machine_line

PROTOCOLS = ("box3d", "box3d_every_slice", "key_box", "key_point")


def section_choice(c: dict) -> list[str]:
    """propagation_choice.json: the settings chosen on validation objects."""
    out = ["### 3-D propagation: the choice on validation objects (issue 23)", "",
           f"How the next slice is prompted and when propagation stops, chosen on validation "
           f"objects ({', '.join(c['validation_objects'])}), the default adapter's 3-D Dice, "
           f"protocols box3d and key_box (`propagation_choice.json`; "
           f"{machine_line(c.get('machine'))}):", "",
           "| setting | box3d | key_box | mean |", "|---|---|---|---|"]
    for name, s in c["scores"].items():
        cfg = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in c["grid"][name].items())
        mark = " **(chosen)**" if name == c["chosen"] else ""
        out.append(f"| {name}{mark}: {cfg} | {s['box3d']:.3f} | {s['key_box']:.3f} | "
                   f"{s['mean']:.3f} |")
    return out + [""]


def _targets(summary: dict) -> list[str]:
    out = ["| target | model | measured | met |", "|---|---|---|---|"]
    for model, by_prompt in summary.items():
        prop, every = by_prompt["box3d"], by_prompt["box3d_every_slice"]
        worst = min(prop["datasets"][d]["dice"] - every["datasets"][d]["dice"]
                    for d in prop["datasets"])
        gain = prop["mean"] - every["mean"]
        ratio = by_prompt["key_box"]["mean"] / prop["mean"]
        out += [f"| box3d >= box3d_every_slice on every dataset | {model} | worst "
                f"{worst:+.3f} | {'yes' if worst >= 0 else 'no'} |",
                f"| box3d - box3d_every_slice, mean over datasets >= +0.02 | {model} | "
                f"{gain:+.3f} | {'yes' if gain >= 0.02 else 'no'} |",
                f"| key_box >= 0.9 x box3d | {model} | {ratio:.2f} x | "
                f"{'yes' if ratio >= 0.9 else 'no'} |"]
    return out


def _held_out_tumours(r: dict) -> list[str]:
    """Mean 3-D Dice over the tumour patients never used for the choice."""
    held = [row for row in r["rows"] if row["class"] == "tumour"
            and row["case"] not in r["validation_tumours"]]
    if not held:
        return []
    cases = sorted({row["case"] for row in held})
    out = ["", f"Tumour patients never used for the choice ({', '.join(cases)}), mean 3-D Dice:",
           "", "| model | " + " | ".join(PROTOCOLS) + " |", "|---|" + "---|" * len(PROTOCOLS)]
    for model in r["summary"]:
        cells = [np.mean([float(x["dice"]) for x in held
                          if x["model"] == model and x["prompt"] == p]) for p in PROTOCOLS]
        out.append(f"| {model} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return out


def section_timing(t: dict) -> list[str]:
    """propagation_time.json: a typical tumour case, every slice vs propagated."""
    e, p = t["every_slice"], t["propagated"]
    return ["### 3-D propagation: time of a typical tumour case (issue 23)", "",
            f"A typical tumour case ({t['case']}, {' x '.join(map(str, t['shape']))}, 3-D box "
            f"{t['box']} over {e['slices']} slices, default adapter, library calls; "
            f"{machine_line(t.get('machine'))}; the machine was shared with other jobs, so the "
            "encoder timed in the same process is the baseline):", "",
            "| measure | seconds | x encoder per slice | 3-D Dice |", "|---|---|---|---|",
            f"| encoder, one slice (baseline) | {t['encoder_s_per_slice']:.2f} | 1 | |",
            f"| reading the volume | {t['read_s']:.2f} | | |",
            f"| every slice of the box ({e['slices']} slices) | {e['seconds']:.1f} | "
            f"{e['seconds'] / t['encoder_s_per_slice']:.0f} | {e['dice']:.3f} |",
            f"| propagated from the middle slice ({p['slices']} slices segmented) | "
            f"{p['seconds']:.1f} | {p['seconds'] / t['encoder_s_per_slice']:.0f} | "
            f"{p['dice']:.3f} |", "",
            f"Target: < 20 s on the 2-core CPU: propagated {p['seconds']:.1f} s here "
            f"({'met' if p['seconds'] < 20 else 'not met'}; the encoder ran "
            f"{t['encoder_s_per_slice']:.1f} s per slice on this shared machine, ~1 s when the "
            f"2 cores are free, data.md: {p['seconds'] / t['encoder_s_per_slice']:.0f} encoder "
            "passes' worth of time).", ""]


def section_propagation(r: dict) -> list[str]:
    s = r["summary"]
    models = list(s)
    datasets = list(s[models[0]]["box3d"]["datasets"])
    out = ["## 3-D: prompt one slice, follow the object (issue 23)", "",
           "Whole objects of real volumes, each slice encoded once (embedding cache); 3-D Dice, "
           f"NSD at {r['info']['nsd_mm']} mm and HD95 (mm; an empty prediction's capped at the "
           "image diagonal) per object, averaged per dataset (n = objects). Protocols "
           "(`segmote evaluate-model --prompt ...`, `segmote.evaluation.volume_protocols`): "
           "box3d = the object's 3-D box, each side jittered by up to 10 % of its extent (at "
           "least one voxel), followed from its middle slice inside its k-range; "
           "box3d_every_slice = that box on every slice of the range (segmote before "
           "propagation); key_box / key_point = a jittered box / one click at the deepest "
           "pixel of the slice with the most foreground, followed until the object ends. "
           f"AAL structures: {', '.join(r['report_aal'])}. {machine_line(r.get('machine'))}; "
           f"{r['seconds'] / 60:.0f} min. The propagation settings: the next section.", ""]
    for metric, label in (("dice", "3-D Dice"), ("nsd", "NSD"), ("hd95", "HD95 mm")):
        out += [f"{label}:", "", "| dataset | n | " + " | ".join(
            f"{p}: {m}" for p in PROTOCOLS for m in models) + " |",
            "|---|---|" + "---|" * (len(PROTOCOLS) * len(models))]
        for d in datasets:
            n = s[models[0]]["box3d"]["datasets"][d]["n"]
            out.append(f"| {d} | {n} | " + " | ".join(
                f"{s[m][p]['datasets'][d][metric]:.3f}" for p in PROTOCOLS for m in models) + " |")
        key = "mean" if metric == "dice" else f"mean_{metric}"
        out += ["| **mean over datasets** | | " + " | ".join(
            f"{s[m][p][key]:.3f}" for p in PROTOCOLS for m in models) + " |", ""]
    return out + _targets(s) + _held_out_tumours(r) + [""]
