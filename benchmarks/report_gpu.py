"""The GPU / mixed-precision section of docs/benchmarks.md (issue 22), from
benchmarks/results/gpu.json (written by bench_gpu.py, one run per device kind). Called by
benchmarks/run.py. A device kind with no run shows "not yet measured": no number is claimed for
a machine the benchmark did not run on."""

from __future__ import annotations

from common import machine_line

NOT_MEASURED = "not yet measured"
KINDS = (("cuda", "GPU"), ("cpu", "CPU"))


def _encoder(run: dict) -> list[str]:
    out = ["| precision | " + " | ".join(f"batch {b}" for b in run["sizes"]["batches"]) + " |",
           "|---|" + "---|" * len(run["sizes"]["batches"])]
    for p in run["sizes"]["precisions"]:
        cells = [f"{r['slices_per_s']:.3g}" for r in run["encoder"] if r["precision"] == p]
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    return out


def _prompt(run: dict) -> list[str]:
    n = run["sizes"]["prompts"]
    out = [f"| precision | base, 1 prompt | SegMoTE, 1 prompt | SegMoTE / base | "
           f"base, {n} prompts | SegMoTE, {n} prompts |", "|---|---|---|---|---|---|"]
    for r in run["prompt"]:
        out.append(f"| {r['precision']} | {r['base_ms']:.1f} ms | {r['segmote_ms']:.1f} ms | "
                   f"{r['segmote_ms'] / r['base_ms']:.2f} x | {r[f'base_{n}_prompts_ms']:.1f} ms "
                   f"| {r[f'segmote_{n}_prompts_ms']:.1f} ms |")
    return out


def _cli(run: dict) -> list[str]:
    out = ["| run | flags | volume | slices segmented | slices/s | peak RSS | peak GPU memory |",
           "|---|---|---|---|---|---|---|"]
    for r in run["cli"]:
        gpu = f"{r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") is not None else "-"
        out.append(f"| {r['mode']} | `{r['flags'] or '(defaults)'}` | 512 x 512 x "
                   f"{r.get('volume_slices', r['slices'])} | {r['slices']} | "
                   f"{r['slices_per_s']:.3g} | {r['peak_rss_mb']:.0f} MB | {gpu} |")
    return out


def _volume(run: dict) -> list[str]:
    rows = run["volume"] if isinstance(run["volume"], list) else [run["volume"]]  # older runs
    v = rows[0]
    out = [f"In one process, a 512 x 512 x {v['slices']} CT, a box over every slice, fp32, "
           f"each run alternated with the others {v['n']} times (median); slice by slice "
           f"{v['one_s_per_slice']:.2f} s per slice. Target: batched / one at a time <= 1.", "",
           "| batch size | s per slice | batched / one at a time | label maps identical |",
           "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['batch_size']} | {r['batched_s_per_slice']:.2f} | "
                   f"**{r['batched_over_one']:.2f}** | {'yes' if r['identical'] else 'NO'} |")
    return out


def _train(run: dict) -> list[str]:
    out = ["| backbone | batch | precision | step | vs fp32 | peak RSS | peak GPU memory | "
           "encoder per slice (uncached) |", "|---|---|---|---|---|---|---|---|"]
    fp32 = {(r["backbone"], r["batch"]): r["step_s"] for r in run["train"]
            if r["precision"] == "fp32"}
    for r in run["train"]:
        base = fp32.get((r["backbone"], r["batch"]))
        speed = f"{base / r['step_s']:.2f} x faster" if base and r["precision"] != "fp32" else "-"
        gpu = f"{r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") is not None else "-"
        enc = f"{r['encoder_s_per_slice']:.2f} s" if "encoder_s_per_slice" in r else "-"
        out.append(f"| {r['backbone']} | {r['batch']} | {r['precision']} | "
                   f"{r['step_s']:.2f} s | {speed} | {r['peak_rss_mb']:.0f} MB | {gpu} | {enc} |")
    return out


def _part(run: dict, key: str, title: str, table) -> list[str]:
    body = table(run) if run.get(key) else [f"{NOT_MEASURED}."]
    return [title, "", *body, ""]


def section_gpu(result: dict | None) -> list[str]:
    runs = (result or {}).get("runs", {})
    out = ["## GPU and mixed precision (issue 22)", "",
           "`python benchmarks/bench_gpu.py` (the GPU when present, else the CPU at small "
           "sizes). Encoder: LiteMedSAM, random 256 x 256 inputs. Prompt latency: one box after "
           "the image is encoded, base decoder vs SegMoTE with the shipped adapter. CLI: "
           "`segmote predict` on a 512 x 512 x Z CT (the real lung2 volume tiled in z), a box "
           "over every slice, model loading included, in a child process. Training: one step "
           "from cached embeddings (forward + backward + AdamW) on random weights of the "
           "backbone's shapes, in a child process; the encoder column is what a step without "
           "the cache would add per slice (frozen, no gradient).", ""]
    for kind, name in KINDS:
        run = runs.get(kind)
        if run is None:
            out += [f"### {name}", "", f"{NOT_MEASURED} (no {name} run of bench_gpu.py yet: "
                    "no session so far had a GPU; `benchmarks/gpu_device_check.sh` runs it "
                    "on one in a single device call).", ""]
            continue
        loads = run.get("load_avg", {})
        load = (" Load average (1 min) when each part started: "
                + ", ".join(f"{k} {v:.1f}" for k, v in loads.items()) + "." if loads else "")
        rerun = "".join(f" Part {k} rerun: {machine_line(m)}."
                        for k, m in run.get("part_machine", {}).items())
        out += [f"### {name}" + (f": {run['device']}" if kind == "cuda" else ""), "",
                f"Machine: {machine_line(run.get('machine'))};{rerun} median of "
                f"{run['sizes']['repeats']} runs; the parts took "
                f"{sum(run['wall_s'].values()):.0f} s in all.{load}", "",
                *_part(run, "encoder", "Encoder throughput (slices/s):", _encoder),
                *_part(run, "prompt", "Prompt latency:", _prompt),
                *_part(run, "volume", "Volumes, batched vs slice by slice:", _volume),
                *_part(run, "cli", "End to end, `segmote predict`:", _cli),
                *_part(run, "train", "Training step from cached embeddings:", _train)]
    return out
