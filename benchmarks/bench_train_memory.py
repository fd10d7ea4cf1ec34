"""Peak memory of one training step (issue 21, case 15), default recipe, batch 16 on a tiny
2-D + CT set: 8 tumour slices of the bundled lung2 CT crop and 8 copies of the bundled nuclei
image, text prompts and PPT on (the default), 2 refinement rounds.

    python benchmarks/bench_train_memory.py [--steps 2] [--repeats 2] [--off]

Each setting runs in a fresh process (freed memory is not given back to the system, so a
second setting in the same process would inherit the first one's footprint). The peak of a
step is the resident high-water mark (VmHWM) after resetting it (/proc/self/clear_refs) right
before the step, so it includes the model, the text encoder and the batch. Settings:
"off" (with --off) keeps every activation (recompute_rounds false); "on_no_trim" recomputes them
(recompute_rounds, the default before trim_memory); "on" is the default recipe
(recompute_rounds and trim_memory: `segmote.training.memory`). "on_no_trim" and "on" alternate
`--repeats` times, so their step times share the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, status_mb, write_result  # noqa: E402

BATCH = 16


def _batch(cfg, model, texts):
    """The real batch: cached embeddings of 8 CT tumour slices and 8 nuclei images."""
    import nibabel as nib
    import numpy as np
    import torch

    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import SliceSample
    from segmote.samples import bundled_sample_path
    from segmote.training.step import Batch

    ct = bundled_sample_path("lung2_ct_crop")
    lab = bundled_sample_path("lung2_ct_crop_label.nii.gz")
    label = np.asarray(nib.load(lab).dataobj)
    ks = [k for k in range(label.shape[2]) if (label[:, :, k] > 0).sum() >= 10]
    samples = [SliceSample("lung", "lung2", ct, lab, ks[i % len(ks)], 2, 1, "tumour", "CT",
                           int((label[:, :, ks[i % len(ks)]] > 0).sum())) for i in range(8)]
    nuclei = (bundled_sample_path("nuclei"), bundled_sample_path("nuclei_label.png"))
    samples += [SliceSample("nuclei", "n0", *nuclei, None, 2, 1, "nuclei", "MICROSCOPY",
                            100)] * (BATCH - 8)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp), model, "bench", None)
        cache.build(samples, progress=False)
        cached = [cache.get(s) for s in samples]
    target = torch.stack([(c.label == 1).float()[None] for c in cached])
    return lambda step: Batch(torch.stack([c.image_embedding for c in cached]),
                              torch.stack([c.early_features for c in cached]), target,
                              [[0, step, j] for j in range(BATCH)],
                              [f"{s.dataset}/{s.class_name}" for s in samples],
                              [s.class_name for s in samples], [[] for _ in samples], target)


SETTINGS = {"off": {"recompute_rounds": False},
            "on_no_trim": {"recompute_rounds": True, "trim_memory": False},
            "on": {"recompute_rounds": True, "trim_memory": True}}


def child(setting: str, steps: int) -> dict:
    """Run `steps` default-recipe steps in this process; peak RSS and time of each."""
    import torch

    from segmote.training.config import load_config
    from segmote.training.step import TrainStep, train_step
    from segmote.training.run_data import class_texts
    from segmote.training.trainer import build_model

    cfg = load_config(overrides={"batch_size": BATCH, **SETTINGS[setting]})
    texts, meta = class_texts(cfg, ["tumour", "nuclei"])
    model = build_model(cfg, torch.device("cpu"), meta.get("dim")).train()
    make = _batch(cfg, model, texts)
    step = TrainStep(model, cfg, texts)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    before = status_mb("VmRSS")
    peaks, seconds = [], []
    for i in range(steps):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the high-water mark to the current RSS
        t = time.perf_counter()
        train_step(step, make(i), opt, params, cfg.optim.grad_clip, contextlib.nullcontext, None,
                   torch.device("cpu"))
        seconds.append(time.perf_counter() - t)
        peaks.append(status_mb("VmHWM"))
    return {**SETTINGS[setting], "rss_before_steps_mb": before, "peak_mb": peaks,
            "step_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--off", action="store_true",
                    help="also run the setting that keeps every activation (5.5 GB, slow)")
    ap.add_argument("--child", choices=tuple(SETTINGS))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    runs: dict[str, dict] = {}
    for name in ["off"] * args.off + ["on_no_trim", "on"] * args.repeats:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--steps",
                              str(args.steps)], check=True, capture_output=True, text=True)
        got = json.loads(out.stdout.splitlines()[-1])
        run = runs.setdefault(name, {**SETTINGS[name], "rss_before_steps_mb": [],
                                     "peak_mb": [], "step_s": []})
        run["rss_before_steps_mb"].append(got["rss_before_steps_mb"])
        run["peak_mb"] += got["peak_mb"]
        run["step_s"] += got["step_s"]
        print(name, got, flush=True)
    res = {"machine": machine(), "batch": BATCH, "steps": args.steps, "repeats": args.repeats,
           "load_average": os.getloadavg(), "runs": runs,
           "command": f"python benchmarks/bench_train_memory.py --steps {args.steps} "
                      f"--repeats {args.repeats}" + " --off" * args.off}
    print(write_result("train_memory", res))


if __name__ == "__main__":
    main()
