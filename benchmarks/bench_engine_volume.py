"""3-D volumes end to end with each engine (part "volume" of bench_engine.py): `segmote predict`
in a fresh process, timed from start to exit (imports, model load, reading, every prompted slice
encoded and decoded, writing).

- the tumour case: a box over 30 slices (z 5..34) around the tumour of the real 512 x 512 x 61
  pyradiomics lung2 CT;
- a 512 x 512 x 300 CT (lung2 tiled in z, bench_predict.make_volume: synthetic in that sense)
  with a box on `slices` of its slices: PyTorch and the engine on the same slices give the
  slices/s ratio; with slices=300 the box is on every slice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

TUMOUR_BOX = "316,331,5,406,400,34"  # i, j, k inclusive: the label's box (318..404, 333..398,
# z 15..25) padded by 2 px, over 30 slices


def _predict(src: Path, out: Path, box: str, engine: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "segmote.cli.main", "predict", "-i", str(src), "-o", str(out),
           "--box", box, "--adapter", "none", "--engine", engine]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t


def volume(engine: str, slices: int = 20) -> dict:
    from bench_predict import make_volume
    from segmote.samples import fetch_sample

    lung2 = fetch_sample("pyradiomics") / "Dataset001_PyradiomicsCT/imagesTr/lung2_0000.nrrd"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "ct300.nii.gz"
        if slices:
            make_volume(big, 300)
        for label in (engine, "torch"):
            runs.append({"case": "tumour box over 30 slices, 512 x 512 x 61 CT", "engine": label,
                         "slices": 30, "seconds": _predict(lung2, Path(tmp) / "a.nii.gz",
                                                           TUMOUR_BOX, label)})
            if slices:
                runs.append({"case": f"512 x 512 x 300 CT, box on {slices} slices",
                             "engine": label, "slices": slices,
                             "seconds": _predict(big, Path(tmp) / "b.nii.gz",
                                                 f"150,180,0,350,330,{slices - 1}", label)})
            print(runs, flush=True)
    key = slices or 30  # the tumour case alone when slices = 0
    by = {(r["engine"], r["slices"]): r for r in runs}
    speedup = by[("torch", key)]["seconds"] / by[(engine, key)]["seconds"]
    return {"machine": machine(), "runs": runs, "slices_per_second_ratio": speedup,
            "note": f"slices/s with {engine} = {speedup:.2f} x PyTorch's on the same {key} "
                    "slices (target for the 300-slice CT: >= 2 x); the processes ran one after "
                    "the other on the shared machine, other jobs running."}
