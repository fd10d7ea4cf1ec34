"""3-D propagation from a key slice (issue 23): how the next slice is prompted and when to stop,
chosen on validation objects; then every real 3-D sample under the four 3-D protocols; then the
time of a typical tumour case.

    python benchmarks/bench_propagation.py choose    # validation grid -> propagation_choice.json
    python benchmarks/bench_propagation.py report    # evaluate-model, 3-D -> propagation.json
    python benchmarks/bench_propagation.py time      # lung CT, 30-slice box: propagation_time.json
    python benchmarks/bench_propagation.py           # all three

Validation (the choice) and report objects are disjoint: right-hemisphere AAL structures and two
tumour patients (lung1 CT, brain1 MR) choose; the report scores left-hemisphere AAL structures,
the Colin27 brain mask and all five tumour patients (only five exist: the report also gives the
mean over the three never used to choose). Colin27 is one subject: the AAL objects of both sets
are different structures of the same brain. Every slice is encoded once into an embedding
cache (`--cache`) shared by all runs, protocols and models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, write_result  # noqa: E402

VALIDATION_AAL = ["Cingulum_Mid_R", "Putamen_R"]
VALIDATION_TUMOURS = ["lung1", "brain1"]
# large structures with a data.md reference (thalamus, hippocampus, caudate) and two more
REPORT_AAL = ["Thalamus_L", "Hippocampus_L", "Caudate_L", "Lingual_L", "Cerebelum_Crus1_L"]
PROTOCOLS = ["box3d", "box3d_every_slice", "key_box", "key_point"]
DATASETS = {"Dataset001_PyradiomicsCT": "pyradiomics", "Dataset002_PyradiomicsMR": "pyradiomics",
            "Dataset003_Colin27AAL": "colin27", "Dataset004_Colin27Brain": "colin27"}


def data_dirs() -> list[Path]:
    from segmote.samples import sample_path

    return [sample_path(sample) / name for name, sample in DATASETS.items()]


def _all_val_split(dirs: list[Path], path: Path) -> Path:
    """A split file with every case of the folders in "val" (the report scores them all)."""
    from segmote.data.datasets import discover

    split = {d.name: {"train": [], "val": [c.case_id for c in d.cases]} for d in discover(dirs)}
    path.write_text(json.dumps(split))
    return path


def _cache(model, root: Path):
    from segmote.build import resolve_weights
    from segmote.data.cache import EmbeddingCache

    _, sha = resolve_weights("litemedsam", None)
    return EmbeddingCache(root, model, f"litemedsam-{sha[:16]}")


def choose(cache_root: Path) -> dict:
    """Small grid over the prompting of the next slice and the stop rule on the validation
    objects, default adapter output; protocols box3d + key_box."""
    import numpy as np

    from segmote.build import load_model
    from segmote.data.datasets import discover
    from segmote.evaluation.prompted import Protocol
    from segmote.evaluation.volume_protocols import evaluate_volumes, volume_cases
    from segmote.predict.propagation import PropagationConfig

    model = load_model(adapter="default")
    cache = _cache(model, cache_root)
    datasets = discover(data_dirs()[:3])
    split = {d.name: {"val": [c.case_id for c in d.cases
                              if d.is_3d and (d.name.endswith("AAL") or
                                              c.case_id in VALIDATION_TUMOURS)]}
             for d in datasets}
    cases = volume_cases(datasets, split, ["val"], VALIDATION_AAL + ["tumour"])
    protocols = [Protocol("box3d"), Protocol("key_box")]

    def score(config: PropagationConfig) -> dict:
        rows = list(evaluate_volumes(model, cases, protocols, cache, config=config,
                                     outputs=["adapter"]))
        out = {p.prompt: float(np.mean([r.dice["adapter"] for r in rows if r.prompt == p.prompt]))
               for p in protocols}
        out["mean"] = float(np.mean([out[p.prompt] for p in protocols]))
        print(config, out, flush=True)
        return out

    # one change at a time from the starting point (margin 4 px, box only, growth 2, overlap
    # 0.5): the mask prompt added, the stop rule removed (the machine is shared by several
    # jobs: the grid is as small as the two questions allow)
    grid = {"start": PropagationConfig(), "mask_prompt": PropagationConfig(mask_prompt=True),
            "no_stop_rule": PropagationConfig(max_growth=1e9, min_overlap=0.0)}
    scores = {name: score(c) for name, c in grid.items()}
    best = max(scores, key=lambda n: scores[n]["mean"])
    return {"machine": machine(), "validation_objects": [f"{c.case_id}:{c.class_name}"
                                                         for c in cases],
            "protocols": [p.to_dict() for p in protocols], "output": "default adapter",
            "grid": {n: c.__dict__ for n, c in grid.items()}, "scores": scores, "chosen": best}


def report(cache_root: Path) -> dict:
    """`evaluate_models` (the engine of `segmote evaluate-model`) on every real 3-D sample."""
    from segmote.evaluation.model_eval import evaluate_models
    from segmote.predict.propagation import DEFAULT_CONFIG

    dirs = data_dirs()
    with tempfile.TemporaryDirectory() as tmp:
        split = _all_val_split(dirs, Path(tmp) / "split.json")
        t = time.perf_counter()
        ev = evaluate_models(["base", "default"], dirs, PROTOCOLS, split_path=split,
                             cache_dir=cache_root, classes=REPORT_AAL + ["tumour", "brain"])
        seconds = time.perf_counter() - t
    print(ev.format_table(), flush=True)
    return {"machine": machine(), "summary": ev.summary, "info": ev.info, "rows": ev.rows,
            "seconds": seconds, "config": DEFAULT_CONFIG.__dict__,
            "validation_tumours": VALIDATION_TUMOURS, "report_aal": REPORT_AAL}


def timing() -> dict:
    """A typical tumour case: the real lung2 CT (512 x 512 x 61), a 3-D box over 30 slices
    around its tumour; every slice prompted vs propagated from the middle slice, and the
    encoder alone on one slice (the baseline, same process)."""
    import numpy as np
    import torch

    from segmote.build import load_model
    from segmote.data.datasets import discover
    from segmote.data.files import read_label
    from segmote.predict.prompts import ObjectPrompt
    from segmote.predict.volume import segment_volume
    from segmote.slicing import volume_slice
    from segmote.io import read_image
    from segmote.predict.propagation import propagate_object
    from segmote.predict.segmenter import Segmenter
    from segmote.transforms import preprocess

    (ct,) = [d for d in discover(data_dirs()[:1])]
    case = next(c for c in ct.cases if c.case_id == "lung2")
    t = time.perf_counter()
    data = read_image(case.image)
    read_s = time.perf_counter() - t
    gt = read_label(case.label) > 0
    ks = np.flatnonzero(gt.any(axis=(0, 1)))
    i, j = np.flatnonzero(gt.any(axis=(1, 2))), np.flatnonzero(gt.any(axis=(0, 2)))
    mid = (ks[0] + ks[-1]) // 2
    k0, k1 = max(mid - 15, 0), min(mid + 14, gt.shape[2] - 1)  # 30 slices
    box = (i[0] - 2, j[0] - 2, i[-1] + 2, j[-1] + 2)
    model = load_model(adapter="default")
    seg = Segmenter(model)
    x, _ = preprocess(volume_slice(data.array, mid, 2), 256, "CT")
    with torch.inference_mode():
        model.encode(x[None])
        t = time.perf_counter()
        for _ in range(3):
            model.encode(x[None])
        encoder_s = (time.perf_counter() - t) / 3
    t = time.perf_counter()
    every = segment_volume(seg, data, [ObjectPrompt(box=(box[0], box[1], k0, box[2], box[3], k1))],
                           2, "CT") > 0
    every_s = time.perf_counter() - t
    t = time.perf_counter()
    prop = propagate_object(seg, data.array, (k0 + k1) // 2, box=box, modality="CT",
                            k_range=(k0, k1))
    prop_s = time.perf_counter() - t
    from segmote.evaluation.metrics import dice
    return {"machine": machine(), "case": "pyradiomics lung2 CT", "shape": list(data.array.shape),
            "box": [int(v) for v in (box[0], box[1], k0, box[2], box[3], k1)],
            "read_s": read_s, "encoder_s_per_slice": encoder_s,
            "every_slice": {"seconds": every_s, "slices": int(k1 - k0 + 1),
                            "dice": dice(every, gt)},
            "propagated": {"seconds": prop_s, "slices": len(prop.slices),
                           "dice": dice(prop.mask, gt)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", choices=["choose", "report", "time"],
                    default=["choose", "report", "time"])
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "segmote" / "cache3d"),
                    help="embedding cache folder (kept between runs)")
    args = ap.parse_args()
    import torch
    torch.manual_seed(0)
    for part in args.parts:
        if part == "choose":
            print(write_result("propagation_choice", choose(Path(args.cache))))
        elif part == "report":
            print(write_result("propagation", report(Path(args.cache))))
        else:
            print(write_result("propagation_time", timing()))


if __name__ == "__main__":
    main()
