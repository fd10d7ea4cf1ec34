"""Training-step cost (issue 4): a step from cached embeddings vs the same step running the frozen
encoder, same batch, same process; and the peak memory of cached training.

    python benchmarks/bench_train.py [--batch 4] [--repeats 5]

The batch is real: tumour slices of the bundled lung2 CT crop (box prompts, default refinement
rounds). "uncached" = encode the batch's slices (no grad: the encoder is frozen) + the step;
"cached" = the step alone, on embeddings read back from an `EmbeddingCache` on disk.
LiteMedSAM's encoder is small (TinyViT, 256 px), so the ratio is far below what a 1024 px ViT
gives; the script also times the SAM ViT-B encoder (architecture only: timing does not depend on
the weights) against the same step to show that case.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import SliceSample
    from segmote.samples import bundled_sample_path
    from segmote.training.config import TrainConfig
    from segmote.training.step import Batch, TrainStep, train_step
    from segmote.training.trainer import build_model
    from segmote.transforms import preprocess

    cfg = TrainConfig()
    model = build_model(cfg, torch.device("cpu")).train()
    image_path = bundled_sample_path("lung2_ct_crop")
    label_path = bundled_sample_path("lung2_ct_crop_label.nii.gz")
    label = np.asarray(nib.load(label_path).dataobj)
    ks = [k for k in range(label.shape[2]) if (label[:, :, k] > 0).sum() >= 10][:args.batch]
    samples = [SliceSample("lung", "lung2", image_path, label_path, k, 2, 1, "tumour", "CT",
                           int((label[:, :, k] > 0).sum())) for k in ks]
    ct = np.asarray(nib.load(image_path).dataobj)
    inputs = torch.stack([preprocess(ct[:, :, k].T, model.img_size, "CT")[0] for k in ks])

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp), model, "bench", None)
        cache.build(samples, progress=False)
        cached = [cache.get(s) for s in samples]
        emb = torch.stack([c.image_embedding for c in cached])
        early = torch.stack([c.early_features for c in cached])
        target = torch.stack([(c.label == 1).float()[None] for c in cached])
    seeds = [[0, 0, i] for i in range(len(ks))]
    step = TrainStep(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    import contextlib

    def cached_step(e: torch.Tensor = emb, f: torch.Tensor = early) -> None:
        batch = Batch(e, f, target, seeds, ["lung/tumour"] * len(ks), ["tumour"] * len(ks))
        train_step(step, batch, opt, params, cfg.optim.grad_clip, contextlib.nullcontext, None,
                   torch.device("cpu"))

    def uncached_step() -> None:
        with torch.no_grad():
            enc = model.encode(inputs)
        cached_step(enc.image_embedding, enc.early_features)

    t_cached = median_time(cached_step, args.repeats)
    t_uncached = median_time(uncached_step, args.repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    from segmote.modeling.image_encoder_vit import build_vit_encoder
    vit_b = build_vit_encoder("vit_b", img_size=1024).eval()
    with torch.no_grad():  # one 1024 px image (~10-20 s here), scaled to the batch
        t_vit = len(ks) * median_time(lambda: vit_b(torch.randn(1, 3, 1024, 1024)), 1, warmup=0)
    res = {"machine": machine(), "batch": len(ks), "refine_rounds": cfg.prompts.refine_rounds,
           "cached_step_s": t_cached, "uncached_step_s": t_uncached,
           "speedup_litemedsam": t_uncached / t_cached,
           "sam_vit_b_encoder_s_for_batch": t_vit,
           "speedup_if_encoder_were_sam_vit_b": (t_vit + t_cached) / t_cached,
           "peak_rss_mb_cached_training": peak_mb}
    print(res)
    print(write_result("train_step", res))


if __name__ == "__main__":
    main()
