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
DOC = HERE.parent / "docs" / "benchmarks.md"
SCRIPTS = {"faithfulness": "bench_faithfulness.py", "predict": "bench_predict.py",
           "mote_decoder": "bench_mote_decoder.py", "train_step": "bench_train.py",
           "evaluate": "bench_evaluate.py"}


def _load(name: str) -> dict | None:
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(m: dict | None) -> str:
    if not m:
        return "unknown machine"
    return (f"{m.get('cores')}-core {m.get('cpu')} CPU, torch {m.get('torch')} "
            f"({m.get('torch_threads')} threads), {m.get('date')}")


def section_faithfulness(r: dict) -> list[str]:
    out = ["## LiteMedSAM faithfulness (issue 2)", "",
           "Tight ground-truth boxes, reference protocol of data.md "
           "(`segmote.evaluation.reference`); Dice per instance, averaged. "
           f"Machine: {_machine(r.get('machine'))}.", "",
           "| set | n | our Dice | reference | difference |", "|---|---|---|---|---|"]
    out += [f"| {x['set']} | {x['n']} | {x['dice']:.3f} | {x['reference']:.3f} | "
            f"{x['diff']:+.3f} |" for x in r["rows"]]
    return out + [""]


def section_predict(r: dict) -> list[str]:
    i, v = r["interactive"], r.get("volume")
    out = ["## Interactive and volume inference (issue 2)", "",
           f"Machine: {_machine(r.get('machine'))}. Ratios are against the encoder timed in the "
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
            f"(p10..p90). Machine: {_machine(r.get('machine'))}.", "",
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
    return ["## Training step from cached embeddings (issue 4, in progress)", "",
            f"Batch of {r['batch']} real tumour slices (bundled lung2 CT crop), box prompts + "
            f"{r['refine_rounds']} refinement rounds, forward + backward + AdamW, median. "
            f"Machine: {_machine(r.get('machine'))}.", "",
            "| measure | value | target |", "|---|---|---|",
            f"| step from cached embeddings | {r['cached_step_s']:.2f} s | baseline |",
            f"| same step running the LiteMedSAM encoder | {r['uncached_step_s']:.2f} s = "
            f"**{r['speedup_litemedsam']:.1f} x** the cached step | >= 20 x |",
            f"| same step if the encoder were SAM ViT-B at 1024 px "
            f"({r['sam_vit_b_encoder_s_for_batch']:.1f} s for the batch) | "
            f"{r['speedup_if_encoder_were_sam_vit_b']:.1f} x | >= 20 x |",
            f"| peak RSS of cached training (this process) | "
            f"{r['peak_rss_mb_cached_training']:.0f} MB | < 4096 MB |",
            "", "LiteMedSAM's TinyViT at 256 px costs only ~25 decoder passes, and a training step "
            "runs the decoder forward and backward for every refinement round, so caching cannot "
            "give 20 x there; with a 1024 px ViT encoder it does.", ""]


SECTIONS = {"faithfulness": section_faithfulness, "predict": section_predict,
            "mote_decoder": section_mote, "train_step": section_train,
            "evaluate": section_evaluate}


def write_report() -> Path:
    lines = ["# Benchmarks", "",
             "Produced by `python benchmarks/run.py` (raw numbers: `benchmarks/results/*.json`). "
             "The machines are shared and noisy, so speed targets are ratios measured in one "
             "process; n is given for every accuracy number.", ""]
    for name, fn in SECTIONS.items():
        r = _load(name)
        lines += fn(r) if r else [f"## {name}", "", "not run yet", ""]
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
            if (HERE / SCRIPTS[name]).is_file():
                print(f"== {name}", flush=True)
                subprocess.run([sys.executable, str(HERE / SCRIPTS[name])], check=True)
    print(write_report())


if __name__ == "__main__":
    main()
