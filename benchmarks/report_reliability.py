"""The docs/benchmarks.md section of benchmarks/bench_train_memory.py (issue 21, case 15)."""

from __future__ import annotations

import statistics

from common import machine_line


def section_train_memory(r: dict) -> list[str]:
    off, on = r["runs"]["off"], r["runs"]["on"]
    med = statistics.median
    rows = []
    for name, run in (("all activations kept (before)", off),
                      ("recompute_rounds (default)", on),
                      ("recompute_rounds, MALLOC_MMAP_THRESHOLD_=8388608", r["runs"]["on_mmap8"])):
        rows.append(f"| {name} | {' / '.join(f'{p:.0f}' for p in run['peak_mb'])} MB | "
                    f"{med(run['step_s']):.1f} s | {run['rss_before_steps_mb']:.0f} MB |")
    return ["## Memory of a training step (issue 21)", "",
            f"Default recipe (text prompts, PPT, 2 refinement rounds), batch {r['batch']}: 8 "
            "tumour slices of the bundled lung2 CT crop and 8 nuclei images, from cached "
            f"embeddings; each setting in a fresh process, {r['steps']} steps, peak resident "
            "memory of each step (model, text encoder and batch included). "
            f"Machine: {machine_line(r.get('machine'))}. Command: `{r['command']}`.", "",
            "| setting | peak RSS per step | median step time | RSS before the steps |",
            "|---|---|---|---|", *rows, "",
            f"Peak ratio {med(on['peak_mb']) / med(off['peak_mb']):.2f}, step-time ratio "
            f"{med(on['step_s']) / med(off['step_s']):.2f} (same machine, same run). Where the "
            "memory went (torch profiler): every prompt group of every round kept its "
            "decoder activations for the backward pass (the two-way transformer over the "
            "64 x 64 = 4096 image tokens at width 256, SAM's 4x upscaling to 256 x 256) and "
            "the expert head's image fusion kept its upsampling intermediates; "
            "`recompute_rounds` recomputes them in the backward pass one group at a time "
            "(identical loss and gradients, `tests/test_train.py`). Part of what remains is "
            "freed memory glibc's allocator keeps in its heap; the environment variable of the "
            "last row makes it return large blocks (not set by segmote: it is a "
            "process-wide allocator setting, and costs page faults). The 3 GB target is met "
            "with it, not with glibc's defaults. The machine was shared with other jobs, so "
            "the step times are noisy.", ""]
