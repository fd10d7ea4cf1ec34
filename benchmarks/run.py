"""Run the benchmark suite and write docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/run.py                 # run everything, then write the report
    python benchmarks/run.py --report-only   # only rebuild docs/benchmarks.md
    python benchmarks/run.py --only predict faithfulness
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "curation")]  # curation/: its report module
from common import load_result, machine_line, sha_words, shipped_label  # noqa: E402
from report_auto import section_auto  # noqa: E402
from report_curation import section_curation  # noqa: E402
from report_gpu import section_gpu  # noqa: E402
from report_engine import section_engine  # noqa: E402
from report_propagation import (section_box3d, section_choice,  # noqa: E402
                                section_click_box, section_follow, section_min_slices,
                                section_propagation, section_timing)
from report_reliability import section_train_memory  # noqa: E402

DOC = HERE.parent / "docs" / "benchmarks.md"
SCRIPTS = {"faithfulness": "bench_faithfulness.py", "predict": "bench_predict.py",
           "mote_decoder": "bench_mote_decoder.py", "train_step": "bench_train.py",
           "evaluate": "bench_evaluate.py", "default_adapter": "bench_default_adapter.py",
           "curation": "curation/bench_curation.py planted speed subset --epochs 1 --refine 0",
           "curation_mixed": "curation/bench_curation_mixed.py",
           "curation_noisy": "curation/bench_curation_noisy.py", "auto": "bench_auto.py",
           "propagation": "bench_propagation.py",
           "propagation_box3d": "bench_propagation_box3d.py",
           "follow_adapter": "bench_follow_adapter.py",
           "click_box": "bench_click_box.py",
           "train_memory": "bench_train_memory.py",
           "engine": "bench_engine.py all", "serve": "bench_serve.py",
           "gpu": "bench_gpu.py"}


def section_faithfulness(r: dict) -> list[str]:
    out = ["## LiteMedSAM faithfulness (issue 2)", "",
           "Tight ground-truth boxes, reference protocol of data.md "
           "(`segmote.evaluation.reference`); Dice per instance, averaged. "
           f"Machine: {machine_line(r.get('machine'))}.", "",
           "| set | n | our Dice | reference | difference |", "|---|---|---|---|---|"]
    out += [f"| {x['set']} | {x['n']} | {x['dice']:.3f} | {x['reference']:.3f} | "
            f"{x['diff']:+.3f} |" for x in r["rows"]]
    return out + [""]


def section_predict(r: dict) -> list[str]:
    i, v = r["interactive"], r.get("volume")
    out = ["## Interactive and volume inference (issue 2)", "",
           f"Machine: {machine_line(r.get('machine'))}. Ratios are against the encoder timed in the "
           "same process.", "",
           "| measure | value | target |", "|---|---|---|",
           f"| encoder, one 256 x 256 input | {i['encoder_ms']:.0f} ms | baseline |",
           f"| one box prompt after set_image | {i['prompt_ms']:.1f} ms = "
           f"{100 * i['prompt_over_encoder']:.1f}% of the encoder | <= 6% |",
           f"| set_image + 10 prompts | {i['set_image_plus_10_prompts_ms']:.0f} ms = "
           f"{i['set_image_plus_10_prompts_over_encoder']:.2f} encoder passes | ~1 pass |",
           f"| pre+post-processing, 256 x 256 slice | {i['pre_ms_256'] + i['post_ms_256']:.1f} ms"
           f" = {100 * i['prepost_over_encoder_256']:.1f}% | <= 10% |",
           f"| pre+post-processing, 512 x 512 slice | {i['pre_ms_512'] + i['post_ms_512']:.1f} ms"
           f" = {100 * i['prepost_over_encoder_512']:.1f}% | <= 10% |"]
    if v:
        out += [f"| volume {' x '.join(map(str, v['shape']))} {v['dtype']} CT, full-range box: "
                f"peak RSS | {v['peak_rss_mb']:.0f} MB | < 2048 MB |",
                f"| same volume: throughput | {v['slices_per_second']:.2f} slices/s "
                f"({v['seconds']:.0f} s) | report |"]
        if "seconds_per_slice_over_encoder" in v:
            out += [f"| same volume: wall time per slice (read, slice, pre/post, encode, decode, "
                    f"write) | {v['seconds_per_slice_over_encoder']:.2f} x the encoder alone "
                    f"({v['encoder_ms_same_process']:.0f} ms) | ~1 x |"]
    return out + [""]


def section_evaluate(r: dict) -> list[str]:
    return ["## `segmote evaluate` speed (issue 6)", "",
            f"{r['n_cases']} volumes of {' x '.join(map(str, r['shape']))}, {r['n_classes']} "
            f"classes, spacing {r['spacing_mm']} mm, on a {r['cpu_count']}-core {r['machine']} "
            f"CPU: **{r['wall_s']:.1f} s** ({r['s_per_case']:.2f} s per case; target < 60 s).", ""]


def section_mote(r: dict) -> list[str]:
    b, s, m = r["base_decoder_ms"], r["segmote_decoder_ms"], r["memory"]
    return ["## SegMoTE decoder cost (issue 3)", "",
            f"{r['benchmark']}; {r['runs']} timed runs after {r['warmup']} warm-up, median "
            f"(p10..p90). Machine: {machine_line(r.get('machine'))}.", "",
            "| measure | value | target |", "|---|---|---|",
            f"| base SAM decoder, one prompt | {b['median']:.1f} ms ({b['p10']:.1f}..{b['p90']:.1f})"
            " | baseline |",
            f"| SegMoTE decoder, one prompt | {s['median']:.1f} ms ({s['p10']:.1f}..{s['p90']:.1f})"
            f" = **{r['ratio_median']:.3f} x** base | <= {r['target_ratio']} x |",
            f"| per-image head features (once per image) | "
            f"{r['prepare_image_ms_median_once_per_image']:.1f} ms | cached |",
            f"| adapter parameters | {r['adapter_parameters']:,} | < 5M |",
            f"| adapter memory at inference (weights {m['adapter_weights_mb']} MB + per-image "
            f"cache {m['per_image_cache_mb']} MB + per-prompt allocations "
            f"<= {m['per_prompt_extra_alloc_mb_upper_bound']} MB) | {m['total_mb']:.1f} MB | "
            f"< {r['memory_target_mb']} MB |", ""]


def section_train(r: dict) -> list[str]:
    return ["## Training step from cached embeddings (issue 4)", "",
            f"Batch of {r['batch']} real tumour slices (bundled lung2 CT crop), box prompts + "
            f"{r['refine_rounds']} refinement rounds, forward + backward + AdamW, median. "
            f"Machine: {machine_line(r.get('machine'))}.", "",
            "| measure | value | target |", "|---|---|---|",
            f"| step from cached embeddings | {r['cached_step_s']:.2f} s | baseline |",
            f"| same step running the LiteMedSAM encoder | {r['uncached_step_s']:.2f} s = "
            f"**{r['speedup_litemedsam']:.1f} x** the cached step | >= 20 x |",
            f"| same step if the encoder were SAM ViT-B at 1024 px "
            f"({r['sam_vit_b_encoder_s_for_batch']:.1f} s for the batch) | "
            f"{r['speedup_if_encoder_were_sam_vit_b']:.1f} x | >= 20 x |",
            f"| peak RSS of cached training (this process) | "
            f"{r['peak_rss_mb_cached_training']:.0f} MB | < 4096 MB |",
            "", "The 20 x target is not met on LiteMedSAM and cannot be: its TinyViT at 256 px "
            "costs only ~25 decoder passes, while a training step runs the decoder forward and "
            "backward for every refinement round, so per sample the step costs about a fifth "
            "of the encoder and skipping the encoder can give at most (encoder + step) / step, "
            "about 5 x. With a 1024 px ViT encoder (SAM / MedSAM) caching gives the 20 x.", ""]


def section_default_adapter(r: dict) -> list[str]:
    box, point = r["summary"]["box"], r["summary"]["point"]
    out = ["## Default adapter on held-out data (issue 4)", "",
           f"Base LiteMedSAM vs LiteMedSAM + the default adapter (`{shipped_label(r)}`, "
           f"{sha_words(r)}), both outputs from the same decode; prompts "
           f"{', '.join(json.dumps(p) for p in r['protocols'])}; Dice at the original size, per "
           f"(slice, class) sample, class-mean per dataset. Machine: {machine_line(r.get('machine'))}."
           " Held-out data and how honest each hold-out is:", ""]
    for d, h in r["held_out"].items():
        out.append(f"- {d}: {', '.join(h['cases'])} ({h['note']})")
    out += ["", "| dataset | n | box: base | box: adapter | point: base | point: adapter |",
            "|---|---|---|---|---|---|"]
    for d in box["base"]["datasets"]:
        b, a = box["base"]["datasets"][d], box["adapter"]["datasets"][d]
        pb, pa = point["base"]["datasets"][d], point["adapter"]["datasets"][d]
        out.append(f"| {d} | {b['n']} | {b['dice']:.3f} | {a['dice']:.3f} | {pb['dice']:.3f} | "
                   f"{pa['dice']:.3f} |")
    out.append(f"| **mean over datasets** | {r['n_samples']} | {box['base']['mean']:.3f} | "
               f"**{box['adapter']['mean']:.3f}** | {point['base']['mean']:.3f} | "
               f"**{point['adapter']['mean']:.3f}** |")
    others = [p for p in r["summary"] if p not in ("box", "point")]
    if others:
        out += ["", "Other protocols (" + ", ".join(
            json.dumps(p) for p in r["protocols"] if p["prompt"] in others) + "):", "",
                "| dataset | n | " + " | ".join(f"{p}: base | {p}: adapter" for p in others)
                + " |", "|---|---|" + "---|---|" * len(others)]
        for d in box["base"]["datasets"]:
            out.append(f"| {d} | {box['base']['datasets'][d]['n']} | " + " | ".join(
                f"{r['summary'][p]['base']['datasets'][d]['dice']:.3f} | "
                f"{r['summary'][p]['adapter']['datasets'][d]['dice']:.3f}" for p in others)
                + " |")
        out.append("| **mean over datasets** | | " + " | ".join(
            f"{r['summary'][p]['base']['mean']:.3f} | {r['summary'][p]['adapter']['mean']:.3f}"
            for p in others) + " |")
    c = r["checks"]
    out += ["", "| target | measured | met |", "|---|---|---|",
            f"| box: adapter mean >= base + 0.03 | {c['box_mean_gain']:+.3f} | "
            f"{'yes' if c['box_gain_ok'] else 'no'} |",
            f"| box: no dataset worse than base by > 0.01 | worst {c['box_worst_dataset_change']:+.3f}"
            f" | {'yes' if c['no_dataset_worse_ok'] else 'no'} |",
            f"| point: adapter mean not worse than base | {c['point_mean_gain']:+.3f} | "
            f"{'yes' if c['point_not_worse_ok'] else 'no'} |"]
    t = load_result("default_adapter_training")
    if t:
        out += [f"| training time on this CPU, embedding cache included | "
                f"{t['train_seconds_incl_cache'] / 60:.1f} min ({t.get('threads')} threads; "
                f"{machine_line(t.get('machine'))}) | {'yes' if t['train_seconds_incl_cache'] < 1200 else 'no'}"
                " (< 20 min) |"]
        if "peak_rss_mb" in t:
            out.append(f"| peak RSS of that training run | {t['peak_rss_mb']:.0f} MB | "
                       f"{'yes' if t['peak_rss_mb'] < 4096 else 'no'} (< 4 GB) |")
    out += ["", "Per class (n = samples): see `benchmarks/results/default_adapter.json`.", "",
            "Routing on the held-out prompts (box + point): share of prompts answered by each "
            "expert token, per modality (plot: `docs/default_adapter_routing.png`).", "",
            "| modality | n | " + " | ".join(f"token {t}" for t in
                                            range(len(next(iter(r['routing'].values()))
                                                      ['token_share']))) + " |",
            "|---|---|" + "---|" * len(next(iter(r["routing"].values()))["token_share"])]
    for m, x in r["routing"].items():
        out.append(f"| {m} | {x['n']} | " + " | ".join(f"{s:.2f}" for s in x["token_share"])
                   + " |")
    return out + ["", "![routing](default_adapter_routing.png)", ""]


def section_serve(r: dict) -> list[str]:
    out = ["## `segmote serve`: prompt to overlay through the HTTP API (issue 24)", "",
           "`benchmarks/bench_serve.py`: a real uvicorn server, the bundled CT, slice 7 already "
           "encoded; one prompt = `POST /segment` (a box jittered by up to 3 px) + the `GET "
           "/labels` that redraws the overlay. Baseline: `Segmenter.predict` with the same box, "
           f"timed right before each request. Machine: {machine_line(r.get('machine'))}; "
           "load average during the run in the table (the machine is shared: a load above 2 "
           "on 2 cores slows every number alike).", "",
           "| model | n | median | p90 | Segmenter.predict (median) | server adds | encoder | "
           "load | target |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        name = "base LiteMedSAM" if x["adapter"] == "none" else f"adapter {x['adapter']}"
        out.append(f"| {name} | {x['n']} | {x['median_ms']:.0f} ms | {x['p90_ms']:.0f} ms | "
                   f"{x['predict_median_ms']:.0f} ms | "
                   f"{x['median_ms'] - x['predict_median_ms']:+.0f} ms | "
                   f"{x['encoder_ms']:.0f} ms | {x['load_average']:.1f} | "
                   f"<= {r['target_ms']} ms |")
    return out + [""]


SECTIONS = {"faithfulness": section_faithfulness, "predict": section_predict,
            "mote_decoder": section_mote, "train_step": section_train,
            "evaluate": section_evaluate, "default_adapter": section_default_adapter,
            "curation": section_curation, "auto": section_auto,
            "propagation": section_propagation, "propagation_choice": section_choice,
            "propagation_box3d": section_box3d, "follow_adapter": section_follow,
            "click_box": section_click_box,
            "propagation_min_slices": section_min_slices,
            "propagation_time": section_timing, "train_memory": section_train_memory,
            "engine": section_engine, "serve": section_serve,
            "gpu": section_gpu}


def write_report() -> Path:
    lines = ["# Benchmarks", "",
             "Produced by `python benchmarks/run.py` (raw numbers: `benchmarks/results/*.json`). "
             "The machines are shared and noisy, so speed targets are ratios measured in one "
             "process; n is given for every accuracy number.", ""]
    for name, fn in SECTIONS.items():
        r = load_result(name)
        if name == "gpu":  # one result file for two machines: the section says what is missing
            lines += fn(r)
            continue
        lines += fn(r) if r else [f"## {name}", "", "not run yet (for auto: needs an adapter "
                                  "trained with PPT and text, which this version does not ship)"
                                  if name == "auto" else "not run yet", ""]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(lines))
    return DOC


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--only", nargs="*", choices=list(SCRIPTS))
    args = ap.parse_args()
    if not args.report_only:
        for name in args.only or SCRIPTS:
            if (HERE / SCRIPTS[name].split()[0]).is_file():
                print(f"== {name}", flush=True)
                script, *parts = SCRIPTS[name].split()
                subprocess.run([sys.executable, str(HERE / script), *parts], check=True)
    print(write_report())


if __name__ == "__main__":
    main()
