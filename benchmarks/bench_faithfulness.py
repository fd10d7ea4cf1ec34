"""LiteMedSAM faithfulness: our re-implementation vs the reference Dice of docs/data.md (tight
boxes).

    python benchmarks/bench_faithfulness.py        # fetches the real samples on first use
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402


def main() -> None:
    from segmote.build import load_model
    from segmote.evaluation.reference import REFERENCE_DICE, reference_sets, run_reference
    from segmote.predict.segmenter import Segmenter
    from segmote.samples import fetch_sample, segmote_home
    for name in ("pyradiomics", "nuclei", "colin27"):
        fetch_sample(name)
    seg = Segmenter(load_model(adapter=None))
    sets = reference_sets(segmote_home())
    rows = []
    for name, ref in REFERENCE_DICE.items():
        t = time.perf_counter()
        scores = run_reference(seg, sets[name]())
        got = float(np.mean(scores))
        rows.append({"set": name, "n": len(scores), "dice": got, "reference": ref,
                     "diff": got - ref, "seconds": time.perf_counter() - t})
        print(f"{name:12s} n={len(scores):4d} dice={got:.4f} ref={ref:.3f} diff={got - ref:+.4f}",
              flush=True)
    print(write_result("faithfulness", {"machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
