"""Foundation benchmarks (issue 2): interactive cost, pre/post-processing, 3-D volume memory.

    python benchmarks/bench_predict.py [--slices 300]

All timings are ratios against the encoder measured in the same process (machines are shared).
The volume run happens in a child process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, status_mb, write_result  # noqa: E402


def interactive(repeats: int) -> dict:
    from segmote.build import load_model
    from segmote.io import read_image
    from segmote.predict.segmenter import Segmenter
    from segmote.samples import bundled_sample_path
    from segmote.intensity import intensity_range
    from segmote.transforms import ResizeGeometry, to_input_tensor
    torch.set_grad_enabled(False)
    model = load_model(adapter=None)
    seg = Segmenter(model)
    img = read_image(bundled_sample_path("lung2_ct_crop")).array[:, :, 7].T
    box = (83, 93, 173, 162)
    x = to_input_tensor(img, ResizeGeometry.for_shape(img.shape, 256))[None]
    t_enc = median_time(lambda: model.encode(x), repeats)
    seg.set_image(img, modality="CT")
    t_prompt = median_time(lambda: seg.predict(box=box), repeats * 3)
    t_set_and_10 = median_time(lambda: (seg.set_image(img, modality="CT"),
                                        [seg.predict(box=box) for _ in range(10)]), repeats)

    def pre() -> None:
        g = ResizeGeometry.for_shape(img.shape, 256)
        to_input_tensor(img, g, intensity_range(img, "CT"))
    lowres = torch.randn(1, 1, 256, 256)
    g = ResizeGeometry.for_shape(img.shape, 256)
    t_pre = median_time(pre, repeats * 3)
    t_post = median_time(lambda: (g.logits_to_original(lowres) > 0).numpy(), repeats * 3)
    # a 512 x 512 slice, the common CT size
    big = np.tile(img, (2, 2))
    gb = ResizeGeometry.for_shape(big.shape, 256)
    t_pre512 = median_time(lambda: to_input_tensor(big, gb, intensity_range(big, "CT")), repeats)
    t_post512 = median_time(lambda: (gb.logits_to_original(lowres) > 0).numpy(), repeats)
    return {"encoder_ms": 1e3 * t_enc, "prompt_ms": 1e3 * t_prompt,
            "prompt_over_encoder": t_prompt / t_enc,
            "set_image_plus_10_prompts_ms": 1e3 * t_set_and_10,
            "set_image_plus_10_prompts_over_encoder": t_set_and_10 / t_enc,
            "pre_ms_256": 1e3 * t_pre, "post_ms_256": 1e3 * t_post,
            "prepost_over_encoder_256": (t_pre + t_post) / t_enc,
            "pre_ms_512": 1e3 * t_pre512, "post_ms_512": 1e3 * t_post512,
            "prepost_over_encoder_512": (t_pre512 + t_post512) / t_enc}


def make_volume(path: Path, slices: int) -> None:
    """A 512 x 512 x `slices` int16 CT built from the real pyradiomics lung2 volume (tiled in z)."""
    import nibabel as nib
    from segmote.io import read_image
    from segmote.samples import fetch_sample
    root = fetch_sample("pyradiomics") / "Dataset001_PyradiomicsCT"
    src = read_image(root / "imagesTr/lung2_0000.nrrd")
    reps = int(np.ceil(slices / src.array.shape[2]))
    vol = np.concatenate([src.array] * reps, axis=2)[:, :, :slices].astype(np.int16)
    nib.save(nib.Nifti1Image(vol, src.meta["affine"]), str(path))


def volume_child(path: str, out: str, slices: int) -> None:
    from segmote.build import load_model
    from segmote.io import read_image
    from segmote.predict.pipeline import PredictOptions, predict_file
    from segmote.predict.prompts import ObjectPrompt
    from segmote.transforms import ResizeGeometry, to_input_tensor
    # the encoder alone on one slice of this volume, timed in this process: the baseline for the
    # per-slice overhead (reading, slicing, pre/post-processing, decoding, writing)
    model = load_model(adapter=None)
    img = read_image(path).array[:, :, 0].T.copy()  # a copy: the volume itself is freed
    x = to_input_tensor(img, ResizeGeometry.for_shape(img.shape, 256))[None]
    with torch.inference_mode():
        t_enc = median_time(lambda: model.encode(x), 5)
    t = time.perf_counter()
    predict_file(path, out, [ObjectPrompt(box=(150, 180, 0, 350, 330, slices - 1))],
                 PredictOptions(adapter=None))
    dt = time.perf_counter() - t
    peak = status_mb("VmHWM")  # this child's own peak (ru_maxrss would include the parent's)
    print(f"RESULT {dt} {peak} {t_enc}")


def volume(slices: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "ct.nii.gz", Path(tmp) / "seg.nii.gz"
        make_volume(src, slices)
        proc = subprocess.run([sys.executable, __file__, "--child", str(src), str(out),
                               str(slices)], capture_output=True, text=True, check=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][0]
        dt, peak, t_enc = (float(v) for v in line.split()[1:])
    return {"shape": [512, 512, slices], "dtype": "int16", "seconds": dt,
            "slices_per_second": slices / dt, "peak_rss_mb": peak,
            "encoder_ms_same_process": 1e3 * t_enc,
            "seconds_per_slice_over_encoder": dt / slices / t_enc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        volume_child(args.child[0], args.child[1], int(args.child[2]))
        return
    res = {"machine": machine(), "interactive": interactive(args.repeats)}
    print(res["interactive"])
    res["volume"] = volume(args.slices)
    print(res["volume"])
    print(write_result("predict", res))


if __name__ == "__main__":
    main()
