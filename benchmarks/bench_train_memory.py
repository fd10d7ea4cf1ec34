"""Peak memory of one training step (issue 21, case 15), default recipe, batch 16 on a tiny
2-D + CT set: 8 tumour slices of the bundled lung2 CT crop and 8 copies of the bundled nuclei
image, text prompts and PPT on (the default), 2 refinement rounds.

    python benchmarks/bench_train_memory.py [--steps 3]

Each setting runs in a fresh process (freed memory is not given back to the system, so a
second setting in the same process would inherit the first one's footprint). The peak of a
step is the resident high-water mark (VmHWM) after resetting it (/proc/self/clear_refs) right
before the step, so it includes the model, the text encoder and the batch. A third run sets
MALLOC_MMAP_THRESHOLD_=8388608: glibc then serves blocks of 8 MiB and more with mmap and
returns them to the system when freed, instead of keeping them in its heap.
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
from common import machine, write_result  # noqa: E402

BATCH = 16


def _status(key: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"no {key} in /proc/self/status")


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


def child(recompute: bool, steps: int) -> dict:
    """Run `steps` default-recipe steps in this process; peak RSS and time of each."""
    import torch

    from segmote.training.config import load_config
    from segmote.training.step import TrainStep, train_step
    from segmote.training.trainer import _class_texts, build_model

    cfg = load_config(overrides={"batch_size": BATCH, "recompute_rounds": recompute})
    texts, meta = _class_texts(cfg, ["tumour", "nuclei"])
    model = build_model(cfg, torch.device("cpu"), meta.get("dim")).train()
    make = _batch(cfg, model, texts)
    step = TrainStep(model, cfg, texts)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    before = _status("VmRSS")
    peaks, seconds = [], []
    for i in range(steps):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the high-water mark to the current RSS
        t = time.perf_counter()
        train_step(step, make(i), opt, params, cfg.optim.grad_clip, contextlib.nullcontext, None,
                   torch.device("cpu"))
        seconds.append(time.perf_counter() - t)
        peaks.append(_status("VmHWM"))
    return {"recompute_rounds": recompute, "rss_before_steps_mb": before, "peak_mb": peaks,
            "step_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", choices=("on", "off"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "on", args.steps)))
        return
    runs = {}
    for name, setting, env in (("off", "off", {}), ("on", "on", {}),
                               ("on_mmap8", "on", {"MALLOC_MMAP_THRESHOLD_": str(8 << 20)})):
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--steps",
                              str(args.steps)], check=True, capture_output=True, text=True,
                             env={**os.environ, **env})
        runs[name] = json.loads(out.stdout.splitlines()[-1])
        print(name, runs[name], flush=True)
    res = {"machine": machine(), "batch": BATCH, "steps": args.steps, "runs": runs,
           "command": "python benchmarks/bench_train_memory.py --steps %d" % args.steps}
    print(write_result("train_memory", res))


if __name__ == "__main__":
    main()
