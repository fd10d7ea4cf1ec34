"""Benchmark one prompt through the SegMoTE decoder against the base LiteMedSAM decoder.

Same run, same image embedding (the bundled nuclei sample, its real box): the base decoder
`Sam.decode(encoded, boxes=...)` versus `SegMoTE.decode(features, boxes=...)` with the per-image
features cached by `prepare_image` (as the predictor does). Timings are interleaved (the order
alternates every round) and the median of >= 30 runs is reported, with the ratio (target <= 1.25).

Also reported: the adapter's memory at inference — its weights, the per-image cache, and an upper
bound on the extra per-prompt allocations (total bytes SegMoTE's decode allocates beyond the base
decode's, from the PyTorch profiler; on CUDA the peak-memory counter is used as well).

    python benchmarks/bench_mote_decoder.py [--runs 31] [--threads N] [--device cpu|cuda]
        [--out benchmarks/results/mote_decoder.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segmote.adapter import attach_adapter
from segmote.atomic import atomic_write_text
from segmote.build import build_base
from segmote.samples import bundled_sample_path, bundled_samples
from segmote.transforms import ResizeGeometry, to_input_tensor

MB = 1e6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000


def _allocated_bytes(fn) -> int:
    """Total bytes allocated on the CPU while fn runs (sum of the ops' own allocations)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.self_cpu_memory_usage for e in prof.key_averages()
               if e.self_cpu_memory_usage > 0)


def _cuda_peak(fn, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _summary(values: list[float]) -> dict[str, float]:
    q = np.percentile(values, [10, 90])
    return {"median": round(statistics.median(values), 3), "p10": round(float(q[0]), 3),
            "p90": round(float(q[1]), 3), "min": round(min(values), 3)}


def run(runs: int, warmup: int, device: torch.device) -> dict:
    base = build_base("litemedsam").to(device)
    torch.manual_seed(0)
    model = attach_adapter(base, "new").to(device)  # fresh adapter: same cost as a trained one
    info = bundled_samples()["nuclei"]
    image = np.asarray(Image.open(bundled_sample_path("nuclei")))
    geo = ResizeGeometry.for_shape(image.shape[:2], base.img_size)
    x = to_input_tensor(image, geo)[None].to(device)
    box = torch.as_tensor(geo.boxes_to_input(np.array([info["box"]])), device=device)

    with torch.inference_mode():
        encoded = base.encode(x)
        prepare_ms = [_time_ms(lambda: model.prepare_image(encoded), device) for _ in range(5)]
        features = model.prepare_image(encoded)
        run_base = lambda: base.decode(encoded, boxes=box)  # noqa: E731
        run_mote = lambda: model.decode(features, boxes=box)  # noqa: E731
        assert torch.equal(run_base().masks, run_mote().masks)  # fresh adapter = base output
        for _ in range(warmup):
            run_base(), run_mote()
        times: dict[str, list[float]] = {"base": [], "segmote": []}
        for i in range(runs):  # interleaved, order alternating
            order = (("base", run_base), ("segmote", run_mote))
            for name, fn in order if i % 2 == 0 else order[::-1]:
                times[name].append(_time_ms(fn, device))
        extra_alloc = _allocated_bytes(run_mote) - _allocated_bytes(run_base)
        cuda_extra_peak = None
        if device.type == "cuda":
            cuda_extra_peak = _cuda_peak(run_mote, device) - _cuda_peak(run_base, device)

    adapter_bytes = sum(p.numel() * p.element_size() for p in model.adapter.parameters())
    cache_bytes = features.head_features.numel() * features.head_features.element_size()
    base_ms = statistics.median(times["base"])
    mote_ms = statistics.median(times["segmote"])
    memory = {
        "adapter_weights_mb": round(adapter_bytes / MB, 2),
        "per_image_cache_mb": round(cache_bytes / MB, 2),
        "per_prompt_extra_alloc_mb_upper_bound": round(max(extra_alloc, 0) / MB, 2),
    }
    memory["total_mb"] = round(sum(memory.values()), 2)
    if cuda_extra_peak is not None:
        memory["cuda_per_prompt_extra_peak_mb"] = round(cuda_extra_peak / MB, 2)
    return {
        "benchmark": "one box prompt, per-image features cached; LiteMedSAM 256 px; "
                     "bundled nuclei sample",
        "runs": runs, "warmup": warmup,
        "base_decoder_ms": _summary(times["base"]),
        "segmote_decoder_ms": _summary(times["segmote"]),
        "ratio_median": round(mote_ms / base_ms, 3),
        "target_ratio": 1.25, "meets_target": mote_ms / base_ms <= 1.25,
        "prepare_image_ms_median_once_per_image": round(statistics.median(prepare_ms), 2),
        "adapter_parameters": sum(p.numel() for p in model.adapter.parameters()),
        "memory": memory, "memory_target_mb": 50,
    }


def _machine(device: torch.device) -> dict:
    out = {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
           "platform": platform.platform(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "device": str(device),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    if hasattr(os, "getloadavg"):
        out["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=31, help="timed runs per decoder (>= 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mote_decoder.json"))
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be at least 30")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = _machine(device)
    result = {"machine": machine, **run(args.runs, args.warmup, device)}
    if hasattr(os, "getloadavg"):
        machine["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    b, s = result["base_decoder_ms"]["median"], result["segmote_decoder_ms"]["median"]
    print(f"base decoder {b:.1f} ms, SegMoTE decoder {s:.1f} ms, ratio {result['ratio_median']:.3f}"
          f" (target <= 1.25) on {machine['device']} x{machine['torch_threads']} threads; "
          f"adapter memory {result['memory']['total_mb']:.1f} MB -> {args.out}")


if __name__ == "__main__":
    main()
