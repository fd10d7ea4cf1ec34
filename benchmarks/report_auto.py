"""The text / prompt-free section of docs/benchmarks.md (issue 5), from
benchmarks/results/auto.json and its side results (other modalities, the presence head's
cross-validation, earlier trials). Called by benchmarks/run.py."""

from __future__ import annotations

from pathlib import Path

from common import load_result, machine_line, sha_words, shipped_label, shipped_versions


def _presence_entry(r: dict) -> dict | None:
    """The "presence" header entry of the report's adapter: recorded in the result, else read
    from the shipped file when the result is of that file (results written before bench_auto
    recorded it)."""
    if "presence" in r:
        return r["presence"]
    path = Path(__file__).resolve().parent.parent / r["adapter"]
    if r["adapter_sha256"] not in shipped_versions(path):  # the same tensors, the same entry
        return None
    from segmote.adapter import read_adapter_metadata
    return read_adapter_metadata(path).get("presence")


def _presence_words(r: dict) -> str:
    entry = _presence_entry(r)
    if not entry:
        return ""
    return (f" and the class presence head's probability >= {entry['threshold']}, negatives "
            f"{entry['negatives']}")


def _presence_cv() -> list[str]:
    """The presence head's cross-validation on training cases (`bench_presence_cv.py`)."""
    cv = load_result("presence_cv")
    if not cv:
        return []
    from bench_presence_cv import totals

    out = ["", f"How the presence head's negatives were chosen (`presence_cv.json`): "
           f"{cv['folds']}-fold cross-validation on the *training* cases only, one training case "
           f"per dataset left out in turn ({', '.join(cv['never_left_out'])} never: one training "
           f"case); queries of the left-out slices kept at threshold {cv['threshold']}:", "",
           "| negatives | present kept | same-dataset absent kept | other-modality kept |",
           "|---|---|---|---|"]
    for negatives, result in cv["results"].items():
        t = totals(result)
        cells = [f"{t[k][0]}/{t[k][1]}" if k in t else "-"
                 for k in ("present", "dataset_absent", "other_modality")]
        out.append(f"| {negatives} | " + " | ".join(cells) + " |")
    return out


def _ratios(checks: dict) -> str:
    """'dataset ratio, ...' of prompt-free over box Dice from a bench_auto `checks` dict."""
    return ", ".join(f"{d} {v:.2f}" for d, v in checks["prompt_free_over_box"].items())


def section_auto(r: dict) -> list[str]:
    if "summary" not in r:  # the shipped adapter has no PPT / text: the cost only
        cost = r["cost"]
        return ["## Text prompts and prompt-free segmentation (issue 5)", "",
                "The shipped adapter of this version is not trained with PPT and text (see "
                "docs/text_and_ppt.md), so there is no prompt-free accuracy to report. The cost "
                "of an automatic pass does not depend on the weights; measured with a fresh PPT "
                f"+ text adapter on the bundled 2-D nuclei image, median of {cost['repeats']} "
                f"({machine_line(r.get('machine'))}):", "",
                "| measure | value | target |", "|---|---|---|",
                f"| encoder pass | {cost['encoder_s'] * 1000:.0f} ms | baseline |",
                f"| encoder + automatic pass over {cost['classes']} classes | "
                f"{cost['encoder_plus_auto_s'] * 1000:.0f} ms | |",
                f"| cost per class | {cost['per_class_fraction_of_encoder'] * 100:.1f} % of the "
                f"encoder | < 10 % |", ""]
    s, c = r["summary"], r["checks"]
    cal = r.get("calibration") or {}
    out = ["## Text prompts and prompt-free segmentation (issue 5)", "",
           f"Adapter `{shipped_label(r)}` ({sha_words(r)}) on the held-out "
           f"data of "
           f"the default-adapter section (same cases, same honesty notes); n = (slice, class) "
           f"samples; class-mean Dice per dataset. Protocols: box (tight box + 2 px), box_text "
           f"(box + class name: the mean of the decodes with and without the name, where the "
           f"calibration uses the text beside a box), text (class name alone: PPT, the mask "
           f"at the class's calibrated offset; a query names every instance, so the nuclei of one image are one "
           f"query: n text), auto (text with the calibrated confidence threshold "
           f"{cal.get('threshold', 0):.2f}{_presence_words(r)}). Offsets, threshold and the "
           f"text-beside-a-box "
           f"choice were made on "
           f"{cal.get('calibrated_on', '?')} data. Machine: {machine_line(r.get('machine'))}.", "",
           "| dataset | n box | box | box + text | n text | text alone | auto |",
           "|---|---|---|---|---|---|---|"]
    for d in s["box"]["datasets"]:
        dice = {p: f"{s[p]['datasets'][d]['dice']:.3f}" for p in ("box", "box_text", "text",
                                                                  "auto")}
        out.append(f"| {d} | {s['box']['datasets'][d]['n']} | {dice['box']} | "
                   f"{dice['box_text']} | {s['text']['datasets'][d]['n']} | {dice['text']} | "
                   f"{dice['auto']} |")
    out.append(f"| **mean over datasets** | {r['n_samples']} | {s['box']['mean']:.3f} | "
               f"{s['box_text']['mean']:.3f} | | {s['text']['mean']:.3f} | "
               f"{s['auto']['mean']:.3f} |")
    a = r["absent"]
    out += ["", "Absent classes (every class of a dataset with no pixel in a held-out slice, asked "
            "for in automatic mode):", "", "| dataset | queries | false positives | rate |",
            "|---|---|---|---|"]
    for d, e in a["per_dataset"].items():
        out.append(f"| {d} | {e['queries']} | {e['false_positives']} | {e['fp_rate']:.3f} |")
    o = r.get("other_modalities")
    side = load_result("auto_other_modalities")  # measured later on the same adapter file
    if not o and side and side.get("adapter_sha256") == r.get("adapter_sha256"):
        o = side["other_modalities"]
    if o:
        where = " (`auto_other_modalities.json`, same adapter)" if o is not r.get(
            "other_modalities") else ""
        out += ["", "Classes of other modalities (every class that no dataset of the slice's "
                "modality labels, e.g. the AAL structures on the nuclei image, nuclei on a CT "
                "slice: absent by construction), asked for in automatic mode on every held-out "
                f"slice{where}:", "",
                "| dataset | slices | queries | false positives | rate |", "|---|---|---|---|---|"]
        for d, e in o["per_dataset"].items():
            out.append(f"| {d} | {e['slices']} | {e['queries']} | {e['false_positives']} | "
                       f"{e['fp_rate']:.3f} |")
    if side and side.get("adapter_sha256") != r.get("adapter_sha256"):
        so = side["other_modalities"]
        out += ["", f"Before the presence head (`auto_other_modalities.json`: the same mask "
                f"weights, adapter sha256 {side['adapter_sha256'][:12]}): {so['false_positives']}"
                f"/{so['queries']} = {so['fp_rate'] * 100:.1f} % of these queries gave a mask."]
    out += _presence_cv()
    ratios = _ratios(c)
    cost = r.get("cost") or {}
    out += ["", "| target | measured | met |", "|---|---|---|",
            f"| prompt-free (auto) Dice >= 0.85 x box Dice, binary tasks | {ratios} | "
            f"{'yes' if c['prompt_free_ok'] else 'no'} |",
            f"| text + box >= box | {c['text_box_gain']:+.3f} | "
            f"{'yes' if c['text_box_ok'] else 'no'} |",
            f"| absent classes: < 10 % get a mask | {a['false_positives']}/{a['queries']} = "
            f"{(a['fp_rate'] or 0) * 100:.1f} % | {'yes' if c['absent_fp_ok'] else 'no'} |"]
    if o:
        out.append(f"| classes of other modalities: < 10 % get a mask (same target) | "
                   f"{o['false_positives']}/{o['queries']} = {(o['fp_rate'] or 0) * 100:.1f} % | "
                   f"{'yes' if (o['fp_rate'] or 0) < 0.10 else 'no'} |")
    if cost:
        out.append(f"| automatic pass on a 2-D image: encoder + < 10 % per class | encoder "
                   f"{cost['encoder_s'] * 1000:.0f} ms, + {cost['classes']} classes "
                   f"{cost['encoder_plus_auto_s'] * 1000:.0f} ms: "
                   f"{cost['per_class_fraction_of_encoder'] * 100:.1f} % per class | "
                   f"{'yes' if c['auto_cost_ok'] else 'no'} |")
    before = load_result("auto_no_offsets")
    if before and "checks" in before:
        b = before["checks"]
        br = _ratios(b)
        out += ["", "The same weights before per-class mask offsets (`auto_no_offsets.json`: "
                f"threshold {(before.get('calibration') or {}).get('threshold', 0):.2f} only): "
                f"prompt-free / box {br}, absent-class false positives "
                f"{b['absent_fp_rate'] * 100:.1f} %."]
    trial = load_result("auto_stage2_trial")
    if trial and "checks" in trial:
        t = trial["checks"]
        tr = _ratios(t)
        out += ["", "An earlier stage-2 recipe (`auto_stage2_trial.json`: absent share 0.2, mask "
                "bias also beside boxes, calibration on 1 sample per class) had prompt-free / box "
                f"{tr}, text + box {t['text_box_gain']:+.3f}, absent-class false positives "
                f"{t['absent_fp_rate'] * 100:.1f} %. Its held-out numbers chose the changes to the "
                "shipped recipe (a leak: see docs/text_and_ppt.md)."]
    om = load_result("auto_other_modalities_trial")
    if om and "checks" in om:
        t = om["checks"]
        tr = _ratios(t)
        out += ["", "A stage-2 trial with other-modality negatives in training and calibration "
                "(`auto_other_modalities_trial.json`, not shipped): other-modality false positives "
                f"{t['other_modality_fp_rate'] * 100:.1f} %, same-dataset absent classes "
                f"{t['absent_fp_rate'] * 100:.1f} %, prompt-free / box {tr}, text + box "
                f"{t['text_box_gain']:+.4f}."]
    return out + ["", "Per class: `benchmarks/results/auto.json`.", ""]
