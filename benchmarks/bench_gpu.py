"""GPU and mixed-precision benchmark (issue 22); on a CPU it runs the same parts at small sizes.

    python benchmarks/bench_gpu.py                 # the GPU when there is one, else the CPU
    python benchmarks/bench_gpu.py --device cpu

Parts: (1) LiteMedSAM encoder throughput by batch size and precision; (2) one box prompt
through the base decoder and through SegMoTE (and N prompts in one call); (3) in one process, a
512 x 512 x Z CT (the real pyradiomics lung2 volume tiled in z) with a box over every slice,
slice by slice against batched (`segmote.predict.batched`): seconds per slice, their ratio, and
whether the label maps are identical; (4) `segmote predict` end to end on such volumes (box on
every slice, or `--auto`), each run as the CLI in a child process (its own peak memory), one
of them the 512 x 512 x 300 memory check; (5) a training step from cached embeddings (forward +
backward + AdamW, `segmote.training.step.train_step`) for LiteMedSAM and for a SAM ViT-B-sized
model with random weights (timing does not depend on the weights), each in a child process,
with its time and peak memory, plus the ViT-B encoder pass a step without the cache would add.
Results go to benchmarks/results/gpu.json under the device kind ("cpu" / "cuda"), so a GPU run
sits beside the CPU one; the report marks what was not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_result, machine, median_time, update_result  # noqa: E402

# `segmote predict` runs: (name, flags, slices the box covers: None = all); every run but the
# memory one is timed per slice
_ONE, _AUTO = ["--batch-size", "1"], ["--auto"]
# sizes per device kind: the CPU run must finish in a few minutes on 2 shared cores
SIZES = {
    "cuda": {"batches": (1, 8, 32, 64), "precisions": ("fp32", "bf16", "fp16"), "prompts": 64,
             "slices": 300, "train_batches": (8, 32, 64), "repeats": 10,
             "volume_batches": (8, 32), "volume_repeats": 3,
             "cli": (("fp32, one slice at a time", _ONE, None), ("fp32", [], None),
                     ("bf16", ["--precision", "bf16"], None), ("auto, fp32", _AUTO, None),
                     ("auto, bf16", [*_AUTO, "--precision", "bf16"], None))},
    "cpu": {"batches": (1, 4), "precisions": ("fp32", "bf16"), "prompts": 16, "slices": 8,
            "train_batches": (2,), "repeats": 2, "volume_batches": (1, 2, 4),
            "volume_slices": 4,
            "cli": (("fp32, the CPU default (1 slice per call)", [], None),
                    ("fp32, batches of 4", ["--batch-size", "4"], None),
                    ("auto, fp32", _AUTO, None),
                    ("memory: 512 x 512 x 300, box over 16 slices, the CPU default",
                     ["--slices", "300"], 16))},
}
# --quick: every code path once, at the smallest sizes (a smoke test, not a measurement)
QUICK = {"batches": (1, 2), "prompts": 2, "slices": 2, "train_batches": (1,), "repeats": 1,
         "volume_batches": (2,), "volume_slices": 2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() (synchronised on a GPU)."""
    return median_time(lambda: (fn(), _sync(device)), repeats, warmup)


def encoder_throughput(device: torch.device, size: dict) -> list[dict]:
    from segmote.build import load_model
    from segmote.precision import autocast

    model = load_model(adapter=None, device=device)
    rows = []
    for precision in size["precisions"]:
        for b in size["batches"]:
            x = torch.rand(b, 3, model.img_size, model.img_size, device=device)
            with torch.inference_mode(), autocast(precision, device):
                t = _timed(lambda: model.encode(x), device, size["repeats"])
            rows.append({"precision": precision, "batch": b, "slices_per_s": b / t})
            print("encoder", rows[-1], flush=True)
    return rows


def prompt_latency(device: torch.device, size: dict) -> list[dict]:
    """One box prompt after the image is encoded: base decoder vs SegMoTE, per precision;
    and `prompts` boxes in one decode call."""
    from segmote.build import load_model
    from segmote.precision import autocast

    models = {"base": load_model(adapter=None, device=device),
              "segmote": load_model(device=device)}
    x = torch.rand(1, 3, 256, 256, device=device)
    box = torch.tensor([[60.0, 70.0, 160.0, 150.0]], device=device)
    many = box.expand(size["prompts"], -1).contiguous()
    rows = []
    for precision in size["precisions"]:
        row: dict = {"precision": precision}
        for name, model in models.items():
            with torch.inference_mode(), autocast(precision, device):
                feats = model.prepare_image(model.encode(x))
                row[f"{name}_ms"] = 1e3 * _timed(lambda: model.decode(feats, boxes=box), device,
                                                 3 * size["repeats"])
                row[f"{name}_{size['prompts']}_prompts_ms"] = 1e3 * _timed(
                    lambda: model.decode(feats, boxes=many), device, size["repeats"])
        rows.append(row)
        print("prompt", row, flush=True)
    return rows


def cli_volume(device: torch.device, size: dict) -> list[dict]:
    """`segmote predict` on a 512 x 512 x Z CT (a box over every slice, or `--auto`), each run
    in a child process (its own peak memory), model loading included."""
    from gpu_device import make_volume

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags, covered in size["cli"]:
            flags = list(flags)
            z = int(flags.pop(flags.index("--slices") + 1)) if "--slices" in flags \
                else size["slices"]
            flags = [f for f in flags if f != "--slices"]
            src = Path(tmp) / f"ct{z}.nii.gz"
            if not src.is_file():
                make_volume(src, z)
            box = [] if "--auto" in flags else \
                ["--box", f"150,180,0,350,330,{(covered or z) - 1}", "--every-slice"]
            argv = ["predict", "-i", str(src), "-o", str(Path(tmp) / "seg.nii.gz"), *box,
                    "--modality", "CT", "--device", device.type, "-q", *flags]
            res = _child(["--child-cli", json.dumps(argv)])
            n = covered or z
            rows.append({"mode": name, "flags": " ".join(flags), "volume_slices": z,
                         "slices": n, "slices_per_s": n / res["seconds"],
                         "peak_rss_mb": res["peak_rss_mb"], "peak_gpu_mb": res.get("peak_gpu_mb")})
            print("cli", rows[-1], flush=True)
    return rows


def volume_ratio(device: torch.device, size: dict) -> list[dict]:
    """In one process: a 512 x 512 x Z CT with a box over every slice, slice by slice
    (`segment_volume`) against batched (`segment_volume_batched`) at each batch size, the runs
    alternated `repeats` times; seconds per slice, the ratio to slice by slice, and whether the
    label maps are identical."""
    from gpu_device import make_volume

    from segmote.build import load_model
    from segmote.io import read_image
    from segmote.predict.batched import segment_volume_batched
    from segmote.predict.prompts import ObjectPrompt
    from segmote.predict.segmenter import Segmenter
    from segmote.predict.volume import segment_volume

    z, sizes = size.get("volume_slices", size["slices"]), size["volume_batches"]
    with tempfile.TemporaryDirectory() as tmp:
        make_volume(Path(tmp) / "ct.nii.gz", z)
        data = read_image(Path(tmp) / "ct.nii.gz")
    seg = Segmenter(load_model(device=device))
    objects = [ObjectPrompt(1, box=(150, 180, 0, 350, 330, z - 1))]
    runs = {"one": lambda: segment_volume(seg, data, objects, 2, "CT"),
            **{b: lambda b=b: segment_volume_batched(seg, data, objects, 2, "CT", batch_size=b)
               for b in sizes}}
    times: dict = {name: [] for name in runs}
    outs = {}
    runs["one"]()  # warm-up
    n = size.get("volume_repeats", size["repeats"])
    for _ in range(n):
        for name, run in runs.items():
            t = time.perf_counter()
            outs[name] = run()
            _sync(device)
            times[name].append((time.perf_counter() - t) / z)
    one = statistics.median(times["one"])
    rows = []
    for b in sizes:
        t = statistics.median(times[b])
        rows.append({"slices": z, "batch_size": b, "n": n, "one_s_per_slice": one,
                     "batched_s_per_slice": t, "batched_over_one": t / one,
                     "identical": bool(np.array_equal(outs["one"], outs[b]))})
        print("volume", rows[-1], flush=True)
    return rows


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    an exec, so a child would report its parent's peak at the fork (the models loaded there)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peaks(device: torch.device) -> dict:
    out = {"peak_rss_mb": _peak_rss_mb()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def child_cli(argv: list[str]) -> dict:
    from gpu_device import use_saved_texts

    from segmote.cli.main import main

    use_saved_texts()  # on a device machine without MiniLM (gpu_device.py)
    device = torch.device(argv[argv.index("--device") + 1])
    t = time.perf_counter()
    rc = main(argv)
    _sync(device)
    if rc != 0:
        raise SystemExit(f"segmote {' '.join(argv)} exited {rc}")
    return {"seconds": time.perf_counter() - t, **_peaks(device)}


def child_train(backbone: str, precision: str, batch: int, device: torch.device,
                repeats: int) -> dict:
    """A training step from cached embeddings (random values of the cached shapes) on a
    freshly built backbone with random weights: time per step and peak memory."""
    import torch.nn.functional as F

    from segmote.adapter import attach_adapter
    from segmote.build import get_backbone
    from segmote.precision import autocast, grad_scaler
    from segmote.training.config import TrainConfig
    from segmote.training.step import Batch, TrainStep, train_step

    cfg = TrainConfig()
    text_dim = 384  # all-MiniLM-L6-v2's width, as the default adapter
    model = attach_adapter(get_backbone(backbone).build().requires_grad_(False).eval(), "new",
                           cfg.mote_config(text_dim)).to(device).train()
    h, w = model.prompt_encoder.image_embedding_size
    early = model.image_encoder.early_dim
    mask = 4 * h
    target = torch.zeros(batch, 1, mask, mask, device=device)
    target[:, :, mask // 4:mask // 2, mask // 3:2 * mask // 3] = 1
    data = Batch(torch.randn(batch, model.embed_dim, h, w, device=device),
                 torch.randn(batch, early, h, w, device=device), target,
                 [[0, 0, i] for i in range(batch)], ["bench/blob"] * batch, ["blob"] * batch,
                 [["other"]] * batch)
    texts = {n: F.normalize(torch.randn(text_dim), dim=0).to(device) for n in ("blob", "other")}
    step = TrainStep(model, cfg, texts)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    scaler = grad_scaler(precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = _timed(lambda: train_step(step, data, opt, params, cfg.optim.grad_clip,
                                  lambda: autocast(precision, device), scaler, device),
               device, repeats)
    out = {"step_s": t, **_peaks(device)}
    # what each slice would add without the cache (not on a CPU: a 1024 px ViT-B pass takes
    # 15+ s there, a third of the CPU run's budget)
    if backbone != "litemedsam" and device.type == "cuda":
        n = min(batch, 8)
        x = torch.rand(n, 3, model.img_size, model.img_size, device=device)
        with torch.inference_mode(), autocast(precision, device):
            out["encoder_s_per_slice"] = _timed(lambda: model.encode(x), device, 3) / n
    return out


def training(device: torch.device, size: dict) -> list[dict]:
    rows = []
    for backbone in ("litemedsam", "sam_vit_b"):
        for precision in size["precisions"][:2]:  # fp32 and bf16: the "auto" of a GPU
            for b in size["train_batches"]:
                res = _child(["--child-train", backbone, precision, str(b), "--device",
                              device.type, "--repeats", str(size["repeats"])])
                rows.append({"backbone": backbone, "precision": precision, "batch": b, **res})
                print("train", rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("cpu", "cuda"),
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--quick", action="store_true", help="smallest sizes; writes no result")
    ap.add_argument("--parts", nargs="+", choices=("encoder", "prompt", "volume", "cli", "train"),
                    help="run only these parts (the device's others stay as stored)")
    ap.add_argument("--prepare-device", type=Path, metavar="DIR",
                    help="write what a device machine without network needs (gpu_device.py)")
    ap.add_argument("--child-cli")
    ap.add_argument("--child-train", nargs=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.prepare_device:
        from gpu_device import prepare
        prepare(args.prepare_device)
        return
    if args.child_cli:
        print("RESULT " + json.dumps(child_cli(json.loads(args.child_cli))))
        return
    if args.child_train:
        backbone, precision, batch = args.child_train
        print("RESULT " + json.dumps(child_train(backbone, precision, int(batch), device,
                                                 args.repeats or 3)))
        return
    size = dict(SIZES[device.type])
    if args.quick:
        size.update(QUICK)
    if args.repeats:
        size["repeats"] = args.repeats
    parts = {"encoder": encoder_throughput, "prompt": prompt_latency, "volume": volume_ratio,
             "cli": cli_volume, "train": training}
    result = load_result("gpu") or {"runs": {}}
    # --parts: rerun some parts, keeping this device's other parts from the stored result
    run = result["runs"].get(device.type, {}) if args.parts else {}
    run.update({"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                else "cpu", "sizes": {k: v for k, v in size.items() if k != "cli"}})
    # --parts: the rerun parts' machine (threads, date) apart from the stored parts' one
    run.update({"part_machine": {**run.get("part_machine", {}), **dict.fromkeys(args.parts,
                                                                            machine())}}
               if args.parts else {"machine": machine()})
    wall = run.setdefault("wall_s", {})
    loads = run.setdefault("load_avg", {})  # shared machines: how busy it was
    for name in args.parts or parts:
        loads[name] = os.getloadavg()[0]
        t0 = time.perf_counter()
        run[name] = parts[name](device, size)
        wall[name] = time.perf_counter() - t0
    if args.quick:
        print(json.dumps(run, indent=1))
        return
    # another device's run may have been stored meanwhile: keep it
    print(update_result("gpu", lambda data: data.setdefault("runs", {}).__setitem__(
        device.type, run)))

if __name__ == "__main__":
    main()
