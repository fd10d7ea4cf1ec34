"""The CPU-engine section of docs/benchmarks.md (issue 25), from benchmarks/results/engine.json
(written part by part by bench_engine.py). Called by benchmarks/run.py."""

from __future__ import annotations

from common import load_result, machine_line


def _latency(r: dict) -> list[str]:
    rows, eager = r["rows"], r["rows"]["torch"]["median_s"]
    out = [f"Encoder, one 256 x 256 slice, {r['threads']} threads, configurations interleaved "
           f"in one process, median of n = {rows['torch']['n']} each. Machine: "
           f"{machine_line(r.get('machine'))}. The machine was shared while this ran, so the "
           "absolute seconds are inflated; the ratios are what was measured side by side.", "",
           "| engine | median | x PyTorch eager | x the 0.33 s fp32 floor | max abs embedding "
           "difference |", "|---|---|---|---|---|"]
    for label, x in rows.items():
        out.append(f"| {label} | {x['median_s']:.2f} s | {x['over_eager']:.2f} | "
                   f"{x['median_s'] / r['floor_s']:.1f} | {x['max_abs_diff_embedding']:.1e} |")
    if "load_average" in r:
        out += ["", "Load average (1 min) before / after: "
                + " / ".join(f"{x:.1f}" for x in r["load_average"]) + " on 2 cores."]
    out += ["", f"Targets: fp32 <= 0.45 x eager; reduced precision <= 0.25 x. The floor is "
            f"75 GFLOP per slice at the machine's ~225 GFLOP/s sgemm (issue 25). Reference "
            f"package's own code: {r['reference_code']}.", ""]
    s = r.get("slices")
    if s:
        out += [f"Several slices (a batch of {s['batch']}, n = {s['onnxruntime']['n']}): seconds "
                "per slice with every thread on each operator (intra-op) vs one single-thread "
                "session per thread side by side (slice-parallel):", "",
                "| runtime | intra-op | slice-parallel |", "|---|---|---|"]
        out += [f"| {e} | {s[e]['intra_op']:.2f} s | {s[e]['parallel']:.2f} s |"
                for e in ("onnxruntime", "openvino")]
        out.append("")
    return out + [f"(eager {eager:.2f} s in this run.)", ""]


def _faithfulness(r: dict) -> list[str]:
    labels = list(dict.fromkeys(x["engine"] for x in r["rows"]))
    out = ["Dice on the faithfulness sets (tight boxes, `segmote.evaluation.reference`), each "
           f"engine through the product path; PyTorch: {r['torch_source']}.", "",
           "| set | n | PyTorch | " + " | ".join(labels) + " |",
           "|---|---|---|" + "---|" * len(labels)]
    by = {(x["engine"], x["set"]): x for x in r["rows"]}

    def cell(e: str, name: str) -> str:
        x = by.get((e, name))
        return f"{x['dice']:.4f} ({x['diff_vs_torch']:+.4f})" if x else "not run"

    n = {x["set"]: x["n"] for x in r["rows"]}
    for name, dice in r["torch_dice"].items():
        out.append(f"| {name} | {n.get(name, '')} | {dice:.4f} | "
                   + " | ".join(cell(e, name) for e in labels) + " |")
    out.append("")
    for e in labels:
        done = [abs(by[(e, m)]["diff_vs_torch"]) for m in r["torch_dice"] if (e, m) in by]
        line = (f"- {e}: largest |Dice difference| from PyTorch {max(done):.4f} over "
                f"{len(done)} of {len(r['torch_dice'])} rows")
        fp32 = e.removesuffix("-bf16")
        if fp32 != e:  # reduced precision is judged against its engine's fp32
            vs = [abs(by[(e, m)]["dice"] - by[(fp32, m)]["dice"]) for m in r["torch_dice"]
                  if (e, m) in by and (fp32, m) in by]
            line += f"; from {fp32} fp32 {max(vs):.4f} over {len(vs)} rows"
        out.append(line + ".")
    return out + ["", "Targets: fp32 within 0.002 of PyTorch on every row; reduced precision "
                  "offered only if within 0.005 of fp32 on every row.", ""]


def _heldout(r: dict) -> list[str]:
    e = r["engine"]
    out = [f"Default adapter's held-out table ({r['n_samples']} (slice, class) samples, box "
           f"and point prompts, base and adapter outputs) with PyTorch and with {e}, each "
           "filling its own embedding cache:", "",
           f"| prompt | output | dataset | PyTorch | {e} |", "|---|---|---|---|---|"]
    for p, models in r["torch"]["summary"].items():
        for m, entry in models.items():
            for d, x in entry["datasets"].items():
                y = r[e]["summary"][p][m]["datasets"][d]
                out.append(f"| {p} | {m} | {d} (n={x['n']}) | {x['dice']:.4f} | "
                           f"{y['dice']:.4f} |")
    return out + ["", f"Largest |difference|: {r['max_abs_dataset_diff']:.4f} (target <= 0.002).",
                  ""]


def _volume(r: dict) -> list[str]:
    if "rows" not in r:
        return ["An older run (its layout is not reported).", ""]
    rows = r["rows"]
    out = [f"Configurations interleaved, {r['repeats']} runs each, medians. Load average "
           f"(1 min) during the run: {', '.join(f'{x:.1f}' for x in r['load_average'])}. "
           f"Machine: {machine_line(r.get('machine'))}.", "",
           "Tumour case: `segmote predict --box` over 30 slices of the real 512 x 512 x 61 "
           "lung2 CT, a fresh process, start to exit (target < 15 s). 512 x 512 x 300 CT, a box "
           f"on every slice (`--every-slice`, in-process `predict_file`): the box on 2 and on "
           f"{r['slices']} slices gives seconds per slice and the fixed cost (reading, model "
           "load, writing); slices/s of the 300-slice volume = 300 / (fixed + 300 x per slice) "
           "(target >= 2 x PyTorch eager's).", "",
           "| engine | tumour case | s per slice | fixed | 300-slice CT slices/s | x eager |",
           "|---|---|---|---|---|---|"]
    for label, x in rows.items():
        out.append(f"| {label} | {x['tumour_s']:.1f} s | {x['seconds_per_slice']:.2f} s | "
                   f"{x['fixed_s']:.1f} s | {x['ct300_slices_per_s']:.2f} | "
                   f"{x['ct300_over_torch']:.2f} |")
    if max(r["load_average"]) > 4:
        out += ["", "The machine was busy (load above 2 per core from other jobs): every time is "
                "inflated several-fold, so the < 15 s target cannot be judged from this run; "
                "the ratios are what was measured side by side."]
    return out + [""]


def _partial_faithfulness(rows: list[dict]) -> dict:
    """A faithfulness run that was stopped: its rows so far against the stored PyTorch Dice."""
    torch_dice = {x["set"]: x["dice"] for x in load_result("faithfulness")["rows"]}
    rows = [{**x, "diff_vs_torch": x["dice"] - torch_dice[x["set"]]} for x in rows]
    return {"rows": rows, "torch_dice": torch_dice,
            "torch_source": "benchmarks/results/faithfulness.json (bench_faithfulness.py); "
                            "runs set by set (`--sets`), some not finished"}


def section_engine(r: dict) -> list[str]:
    out = ["## CPU inference engines (issue 25)", "",
           "PyTorch eager vs the exported encoder graph on ONNX Runtime and OpenVINO "
           "(`load_model(engine=...)`, `--engine`); `python benchmarks/bench_engine.py PART`.", ""]
    if "faithfulness" not in r and "faithfulness_rows" in r:
        r = {**r, "faithfulness": _partial_faithfulness(r["faithfulness_rows"])}
    for key, fn in (("latency", _latency), ("faithfulness", _faithfulness),
                    ("heldout", _heldout), ("volume", _volume)):
        out += [f"### {key}", ""] + (fn(r[key]) if key in r else ["not run yet", ""])
        if key == "latency" and "latency_busy" in r:
            out += ["A second run with the reference package's own encoder beside ours, on the "
                    "busy machine (other engineers' jobs: every time inflated ~12 x, and "
                    "PyTorch's two-thread eager suffers most, so these ratios flatter the "
                    "engines; the run above is the one to quote):", ""]
            out += _latency(r["latency_busy"])
    return out
