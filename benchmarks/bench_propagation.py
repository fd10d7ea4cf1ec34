"""3-D propagation from a key slice (issue 23): how the next slice is prompted and when to stop,
chosen on validation objects; then every real 3-D sample under the four 3-D protocols; then the
time of a typical tumour case.

    python benchmarks/bench_propagation.py choose    # validation grid -> propagation_choice.json
    python benchmarks/bench_propagation.py min_slices  # prompt-free volumes' --min-slices
    python benchmarks/bench_propagation.py report    # evaluate-model, 3-D -> propagation.json
    python benchmarks/bench_propagation.py time      # lung CT, 30-slice box: propagation_time.json
    python benchmarks/bench_propagation.py           # all four

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
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, write_result  # noqa: E402

# right-hemisphere structures (the report scores left ones); round 1 chose on the first two
VALIDATION_AAL = ["Cingulum_Mid_R", "Putamen_R", "Insula_R", "Pallidum_R", "Cuneus_R",
                  "Temporal_Sup_R", "Precuneus_R", "Amygdala_R"]
VALIDATION_TUMOURS = ["lung1", "brain1"]
# large structures with a data.md reference (thalamus, hippocampus, caudate) and two more
REPORT_AAL = ["Thalamus_L", "Hippocampus_L", "Caudate_L", "Lingual_L", "Cerebelum_Crus1_L"]
# how far a one-slice prompt is followed: x the key box's half-size in mm (None: no limit)
DEPTHS = [0.5, 0.75, 1.0, 1.5, 2.0]
DEPTH_TIE = 0.01
MIN_SLICES = [1, 2, 3, 5]  # prompt-free volumes: drop 3-D components on fewer slices
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


def cached_main(name: str, run: Callable[[Path], dict], doc: str) -> None:
    """The command line of a benchmark that scores from the shared embedding cache: `--cache`,
    then results/NAME.json = run(cache folder)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "segmote" / "cache3d"),
                    help="embedding cache folder (kept between runs)")
    args = ap.parse_args()
    import torch
    torch.manual_seed(0)
    print(write_result(name, run(Path(args.cache))))


def validation_objects() -> list:
    """The `VolumeCase`s settings are chosen on: the validation tumours and AAL structures."""
    from segmote.data.datasets import discover
    from segmote.evaluation.volume_protocols import volume_cases

    datasets = discover(data_dirs()[:3])
    split = {d.name: {"val": [c.case_id for c in d.cases
                              if d.is_3d and (d.name.endswith("AAL") or
                                              c.case_id in VALIDATION_TUMOURS)]}
             for d in datasets}
    return volume_cases(datasets, split, ["val"], VALIDATION_AAL + ["tumour"])


def choose(cache_root: Path, rescore: bool = False) -> dict:
    """The limits of a one-slice prompt's propagation (no user's box to stay in), chosen on the
    validation objects, protocol key_box, the default adapter's and the base decoder's 3-D
    Dice. Round 1 chose margin, mask prompt and the stop rules the same way (box3d + key_box,
    default adapter; its grid is in git history); a 3-D box's propagation is unchanged."""
    import numpy as np

    from segmote.build import load_model
    from segmote.evaluation.prompted import Protocol
    from segmote.evaluation.volume_protocols import evaluate_volumes
    from segmote.predict.propagation import PropagationConfig

    from common import load_result

    model = load_model(adapter="default")
    cache = _cache(model, cache_root)
    previous = load_result("propagation_choice") or {}
    cases = validation_objects()
    protocols = [Protocol("key_box")]

    def score(config: PropagationConfig) -> dict:
        rows = list(evaluate_volumes(model, cases, protocols, cache, config=config))
        by_dataset: dict = {}
        for r in rows:
            for output, d in r.dice.items():
                by_dataset.setdefault(output, {}).setdefault(r.dataset, []).append(d)
        out = {o: float(np.mean([np.mean(v) for v in ds.values()]))
               for o, ds in by_dataset.items()}
        out["mean"] = float(np.mean(list(out.values())))
        print(config, out, flush=True)
        return out

    # each limit alone and both (round 1's setting, neither limit, drifted: its key_box on the
    # report's AAL structures was 0.01-0.03 with the default adapter, git history of
    # propagation.json; left out of this grid, where it runs for hours on a shared machine)
    # round 2 chose the in-plane limits (max_depth None then: followed to the volume's ends);
    # round 3 the depth limit with them (`max_depth`, x the key box's half-size in mm)
    grid = {"key box": PropagationConfig(max_total=0.0, key_bound=0.0, max_depth=None),
            "total 1.5": PropagationConfig(max_total=1.5, key_bound=None, max_depth=None),
            "key box + total 1.5": PropagationConfig(max_total=1.5, key_bound=0.0,
                                                     max_depth=None),
            "key box + total 2": PropagationConfig(max_total=2.0, key_bound=0.0,
                                                   max_depth=None)}
    grid.update({f"key box + total 1.5 + depth {d}": PropagationConfig(max_depth=d)
                 for d in DEPTHS})
    stored, stored_grid = previous.get("scores", {}), previous.get("grid", {})
    # a grid entry already scored with the same setting keeps its stored score (hours on a
    # shared machine otherwise); --rescore scores every entry again
    scores = {name: stored[name] if name in stored and not rescore and
              {"max_depth": None, **stored_grid.get(name, {})} == c.__dict__ else score(c)
              for name, c in grid.items()}
    reused = [n for n in grid if n in stored and scores[n] is stored[n]]
    best = max(scores, key=lambda n: scores[n]["mean"])
    # depth limits within DEPTH_TIE of the best are ties on ten objects: the mildest of them
    # is kept (a limit cuts objects deeper than wide; eight of the ten are brain parcels, for
    # which shorter is always better; rule set after seeing the grid, said in the report)
    ties = [n for n, c in grid.items() if c.max_depth is not None and
            scores[n]["mean"] >= scores[best]["mean"] - DEPTH_TIE]
    chosen = max(ties, key=lambda n: grid[n].max_depth) if ties else best
    return {"machine": machine(), "validation_objects": [f"{c.case_id}:{c.class_name}"
                                                         for c in cases],
            "protocols": [p.to_dict() for p in protocols], "output": "default adapter and base",
            "grid": {n: c.__dict__ for n, c in grid.items()}, "scores": scores, "best": best,
            "depth_tie": DEPTH_TIE, "chosen": chosen, "reused": reused,
            "reused_machine": previous.get("machine") if reused else None}


def min_slices(cache_root: Path, rescore: bool = False) -> dict:
    """`--min-slices` of prompt-free volumes, chosen on the validation volumes: every slice of
    lung1 (CT) and brain1 (MR) segmented without prompts for every class of the default
    adapter, Colin27 for the eight validation structures and for the brain mask (the one
    volume class whose prompt-free masks work, `auto` section); each class's 3-D components on
    fewer than m slices dropped (`drop_thin_components`), m in MIN_SLICES. Scored: 3-D Dice of
    each class present in the ground truth, and voxels kept of classes absent from it (false
    positives). The rule, fixed before the run: the highest mean Dice over the present
    classes (per dataset, then the mean); values within 0.005 of it are ties, and of those
    the one keeping the fewest absent-class voxels wins. Volumes already scored keep their
    stored rows unless `rescore` (the CT volume alone took 25 min on a busy 2-core CPU)."""
    import numpy as np

    from segmote.build import load_model
    from segmote.data.datasets import discover
    from segmote.data.files import read_label
    from segmote.evaluation.metrics import dice
    from segmote.evaluation.volume_protocols import CachedSlices, volume_cases
    from segmote.predict.propagation import drop_thin_components
    from segmote.predict.segmenter import Segmenter
    from segmote.slicing import set_volume_slice

    from common import load_result

    model = load_model(adapter="default")
    seg, cache = Segmenter(model), _cache(model, cache_root)
    datasets = discover(data_dirs())
    split = {d.name: {"val": [c.case_id for c in d.cases if "Colin27" in d.name or
                              c.case_id in VALIDATION_TUMOURS]} for d in datasets}
    volumes = {}  # one entry per volume: its first case object (the cache keys by slice)
    for c in volume_cases(datasets, split, ["val"]):
        volumes.setdefault((c.dataset, c.case_id), c)
    names_of = {d.name: d.labels for d in datasets}
    previous = load_result("propagation_min_slices") or {}
    stored = [] if rescore else previous.get("rows", [])
    rows = [r for r in stored if (r["dataset"], r["case"]) in volumes]
    done = {(r["dataset"], r["case"]) for r in rows}
    t = time.perf_counter()
    for (dataset, case_id), case in volumes.items():
        if (dataset, case_id) in done:
            continue
        gt = read_label(case.label)
        classes = VALIDATION_AAL if dataset.endswith("AAL") else ["brain"] \
            if dataset.endswith("Brain") else None  # None: every class
        setter = CachedSlices(seg, cache, case, 2)
        pred, names = None, []
        for k in range(gt.shape[2]):
            setter(k)
            p = seg.predict_auto(classes)
            if pred is None:
                pred, names = np.zeros(gt.shape, p.label_map.dtype), p.classes
            set_volume_slice(pred, k, 2, p.label_map)
        value_of = {n: v for v, n in names_of[dataset].items()}
        for m in MIN_SLICES:
            kept = drop_thin_components(pred, 2, m) if m > 1 else pred
            for i, name in enumerate(names, start=1):
                mask = kept == i
                v = value_of.get(name)
                present = v is not None and bool((gt == v).any())
                rows.append({"dataset": dataset, "case": case_id, "class": name,
                             "min_slices": m, "present": present,
                             "dice": float(dice(mask, gt == v)) if present else None,
                             "voxels": int(mask.sum())})
        print(dataset, case_id, f"{time.perf_counter() - t:.0f} s", flush=True)
    scores = {}
    for m in MIN_SLICES:
        mine = [r for r in rows if r["min_slices"] == m]
        by_ds: dict = {}
        for r in mine:
            if r["present"]:
                by_ds.setdefault(r["dataset"], []).append(r["dice"])
        scores[m] = {"dice": float(np.mean([np.mean(v) for v in by_ds.values()])),
                     "dice_per_dataset": {d: float(np.mean(v)) for d, v in by_ds.items()},
                     "absent_voxels": sum(r["voxels"] for r in mine if not r["present"]),
                     "absent_classes_kept": sum(1 for r in mine
                                                if not r["present"] and r["voxels"])}
        print(m, scores[m], flush=True)
    top = max(s["dice"] for s in scores.values())
    ties = [m for m in MIN_SLICES if scores[m]["dice"] >= top - 0.005]
    chosen = min(ties, key=lambda m: (scores[m]["absent_voxels"], m))
    return {"machine": machine(), "volumes": [f"{d}:{c}" for d, c in volumes],
            "aal_classes": VALIDATION_AAL, "scores": {str(m): v for m, v in scores.items()},
            "chosen": chosen, "rows": rows, "seconds": time.perf_counter() - t,
            "reused": {"volumes": sorted(f"{d}:{c}" for d, c in done),
                       "machine": previous.get("machine")}
            if done else None}


def report(cache_root: Path, protocols: list[str] = PROTOCOLS) -> dict:
    """`evaluate_models` (the engine of `segmote evaluate-model`) on every real 3-D sample.
    protocols: those to rerun; the others keep their stored rows and summary (when a change
    leaves them as they were: a one-slice prompt's limits do not touch a 3-D box)."""
    from segmote.evaluation.model_eval import evaluate_models
    from segmote.predict.propagation import DEFAULT_CONFIG

    from common import load_result

    dirs = data_dirs()
    with tempfile.TemporaryDirectory() as tmp:
        split = _all_val_split(dirs, Path(tmp) / "split.json")
        t = time.perf_counter()
        ev = evaluate_models(["base", "default"], dirs, protocols, split_path=split,
                             cache_dir=cache_root, classes=REPORT_AAL + ["tumour", "brain"])
        seconds = time.perf_counter() - t
    print(ev.format_table(), flush=True)
    out = {"machine": machine(), "summary": ev.summary, "info": ev.info, "rows": ev.rows,
           "seconds": seconds, "config": DEFAULT_CONFIG.__dict__,
           "validation_tumours": VALIDATION_TUMOURS, "report_aal": REPORT_AAL,
           "rerun": {"protocols": list(protocols), "machine": machine(), "seconds": seconds}}
    kept = [p for p in PROTOCOLS if p not in protocols]
    old = load_result("propagation") if kept else None
    out["runs"] = {p: out["machine"] for p in protocols}  # which run scored each protocol
    if old is not None:
        out["rows"] = [r for r in old["rows"] if r["prompt"] in kept] + ev.rows
        for model, by_prompt in out["summary"].items():
            by_prompt.update({p: old["summary"][model][p] for p in kept})
            out["summary"][model] = {p: by_prompt[p] for p in PROTOCOLS}
        out["machine"], out["seconds"] = old["machine"], old["seconds"] + seconds
        out["kept_from"] = {"protocols": kept, "machine": old["machine"]}
        out["runs"] = {p: out["runs"].get(p) or protocol_runs(old)[p] for p in PROTOCOLS}
    return out


def protocol_runs(r: dict) -> dict:
    """Protocol -> the `machine()` of the run that scored it, in a stored propagation result
    (files written before `runs` was stored: from its `rerun` and `kept_from`)."""
    if "runs" in r:
        return r["runs"]
    runs = {p: r["machine"] for p in PROTOCOLS}
    if "rerun" in r:
        runs.update({p: r["rerun"]["machine"] for p in r["rerun"]["protocols"]})
    return runs


def _cli_predict(image: Path, out: Path, box: str, engine: str) -> tuple[float, str]:
    """`segmote predict` with the default adapter in a fresh process, timed from start to exit
    (imports, model load, reading, propagation, writing) -> (seconds, its last output line)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, "-m", "segmote.cli.main", "predict", "-i", str(image), "-o", str(out),
           "--box", box, "--engine", engine]
    t = time.perf_counter()
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, (done.stdout.strip().splitlines() or [""])[-1]


def timing(repeats: int = 2) -> dict:
    """A typical tumour case end to end: `segmote predict` on the real lung2 CT (512 x 512 x 61)
    with a 3-D box over 30 slices around its tumour (propagated, the default), PyTorch eager
    and OpenVINO, interleaved with the baseline: the eager encoder on one slice, timed in this
    process between the runs (run under `flock /work/notes/timing.lock`)."""
    import os

    import numpy as np
    import torch

    from bench_engine_volume import TUMOUR_BOX
    from segmote.build import load_model
    from segmote.data.files import read_label
    from segmote.evaluation.metrics import dice
    from segmote.io import read_image
    from segmote.samples import sample_path
    from segmote.slicing import volume_slice
    from segmote.transforms import preprocess

    ct = sample_path("pyradiomics") / "Dataset001_PyradiomicsCT"
    image, label = ct / "imagesTr/lung2_0000.nrrd", ct / "labelsTr/lung2.nrrd"
    gt = read_label(label) > 0
    model = load_model(adapter="default")
    x, _ = preprocess(volume_slice(read_image(image).array, 20, 2), 256, "CT")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        model.encode(x[None])  # warm-up
        for rep in range(repeats):
            t = time.perf_counter()
            model.encode(x[None])
            runs.append({"what": "encoder, one slice (eager, this process)",
                         "seconds": time.perf_counter() - t, "repeat": rep})
            for engine in ("torch", "openvino"):
                out = Path(tmp) / f"{engine}.nii.gz"
                seconds, line = _cli_predict(image, out, TUMOUR_BOX, engine)
                runs.append({"what": f"segmote predict --engine {engine}", "engine": engine,
                             "seconds": seconds, "repeat": rep, "output": line,
                             "dice": dice(read_label(out) > 0, gt)})
                print(runs[-1], flush=True)
    enc = float(np.median([r["seconds"] for r in runs if "engine" not in r]))
    by = {e: float(np.median([r["seconds"] for r in runs if r.get("engine") == e]))
          for e in ("torch", "openvino")}
    return {"machine": machine(), "case": "pyradiomics lung2 CT, 512 x 512 x 61",
            "box": TUMOUR_BOX, "slices_in_box": 30, "runs": runs, "encoder_s": enc,
            "median_s": by, "load_average": list(os.getloadavg()), "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", choices=["choose", "report", "time", "min_slices"],
                    default=["choose", "min_slices", "report", "time"])
    ap.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=PROTOCOLS,
                    help="report: the protocols to rerun (the others keep their stored rows)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "segmote" / "cache3d"),
                    help="embedding cache folder (kept between runs)")
    ap.add_argument("--rescore", action="store_true",
                    help="choose: score every grid entry again (default: reuse stored scores "
                         "of unchanged entries)")
    args = ap.parse_args()
    import torch
    torch.manual_seed(0)
    for part in args.parts:
        if part == "choose":
            print(write_result("propagation_choice", choose(Path(args.cache), args.rescore)))
        elif part == "min_slices":
            print(write_result("propagation_min_slices",
                               min_slices(Path(args.cache), args.rescore)))
        elif part == "report":
            print(write_result("propagation", report(Path(args.cache), args.protocols)))
        else:
            print(write_result("propagation_time", timing()))


if __name__ == "__main__":
    main()
