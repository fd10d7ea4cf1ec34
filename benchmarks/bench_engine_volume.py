"""3-D volumes with each engine (part "volume" of bench_engine.py); run it under
`flock /work/notes/timing.lock`.

- The tumour case, end to end: `segmote predict` in a fresh process, timed from start to exit
  (imports, model load, reading, the slices propagation visits encoded and decoded, writing),
  with a box over 30 slices (z 5..34) around the tumour of the real 512 x 512 x 61 pyradiomics
  lung2 CT. Configurations interleaved, `repeats` runs each, medians.
- A 512 x 512 x 300 CT (lung2 tiled in z, bench_predict.make_volume: synthetic in that sense)
  with a box on every slice (`--every-slice`), in this process (`predict_file`, the product path:
  reading, model load, every slice encoded and decoded, writing). Timing all 300 slices with
  PyTorch takes ~8 minutes here, so each configuration segments a box on 2 and on `slices`
  slices, interleaved; the difference gives seconds per slice, the 2-slice run the fixed cost,
  and slices/s of the whole 300-slice volume = 300 / (fixed + 300 x per slice).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

TUMOUR_BOX = "316,331,5,406,400,34"  # i, j, k inclusive: the label's box (318..404, 333..398,
# z 15..25) padded by 2 px, over 30 slices
# the configurations timed (OpenVINO bf16 failed the Dice rule: not offered, not timed here)
CONFIGS = ("torch", "onnxruntime", "openvino")


def _predict(src: Path, out: Path, box: str, engine: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "segmote.cli.main", "predict", "-i", str(src), "-o", str(out),
           "--box", box, "--adapter", "none", "--engine", engine, "-q"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t


def _in_process(src: Path, out: Path, slices: int, engine: str) -> float:
    from segmote.predict.options import PredictOptions
    from segmote.predict.pipeline import predict_file
    from segmote.predict.prompts import ObjectPrompt

    opts = PredictOptions(adapter=None, engine=engine, every_slice=True)
    t = time.perf_counter()
    predict_file(src, out, [ObjectPrompt(box=(150, 180, 0, 350, 330, slices - 1))], opts)
    return time.perf_counter() - t


def volume(labels: list[str], slices: int = 12, repeats: int = 2) -> dict:
    from bench_predict import make_volume
    from segmote.samples import fetch_sample

    lung2 = fetch_sample("pyradiomics") / "Dataset001_PyradiomicsCT/imagesTr/lung2_0000.nrrd"
    tumour: dict[str, list[float]] = {k: [] for k in labels}
    small: dict[str, list[float]] = {k: [] for k in labels}
    big: dict[str, list[float]] = {k: [] for k in labels}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        ct = Path(tmp) / "ct300.nii.gz"
        make_volume(ct, 300)
        for _ in range(repeats):
            for label in labels:
                tumour[label].append(_predict(lung2, Path(tmp) / "a.nii.gz", TUMOUR_BOX, label))
                small[label].append(_in_process(ct, Path(tmp) / "b.nii.gz", 2, label))
                big[label].append(_in_process(ct, Path(tmp) / "b.nii.gz", slices, label))
                print(label, tumour[label][-1], small[label][-1], big[label][-1], flush=True)
            load.append(os.getloadavg()[0])
    rows = {}
    for label in labels:
        per_slice = (statistics.median(big[label]) - statistics.median(small[label])) / (slices - 2)
        fixed = statistics.median(small[label]) - 2 * per_slice
        rows[label] = {"tumour_s": statistics.median(tumour[label]), "tumour_runs": tumour[label],
                       "small_runs": small[label], "big_runs": big[label],
                       "seconds_per_slice": per_slice, "fixed_s": fixed,
                       "ct300_slices_per_s": 300 / (fixed + 300 * per_slice)}
    for label in labels:
        rows[label]["ct300_over_torch"] = (rows[label]["ct300_slices_per_s"]
                                           / rows["torch"]["ct300_slices_per_s"])
    return {"machine": machine(), "repeats": repeats, "slices": slices, "rows": rows,
            "load_average": load}
