"""Held-out report of the default adapter: base LiteMedSAM vs base + adapter, box and point
prompts, per dataset and class with n; routing per modality (table + plot); training time.

    python benchmarks/bench_default_adapter.py --run runs/default_adapter   # a finished run
    python benchmarks/bench_default_adapter.py                              # the shipped adapter

Held-out = the "val" part of the run's split.json (segmote.training.default_adapter: unseen
patients for pyradiomics; a held-out quadrant / held-out slabs of the one nuclei image / the one
Colin27 brain, which are NOT unseen subjects). Every held-out slice with >= 20 foreground pixels
is used (the per-epoch validation during training saw at most 2 per class). Both outputs come
from the same decode, so base and adapter see identical features and prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, write_result  # noqa: E402

DOCS = HERE.parent / "docs"


def _routing(results: list, num_tokens: int) -> dict:
    """Per modality: share of prompts answered by each expert token, and expert use per block."""
    out: dict = {}
    for r in results:
        if r.selected_token is None:
            continue
        m = out.setdefault(r.modality or "unknown", {"n": 0, "tokens": Counter(), "experts": []})
        m["n"] += 1
        m["tokens"][r.selected_token] += 1
        m["experts"].append(r.experts)
    table = {}
    for modality, m in sorted(out.items()):
        experts = np.array(m["experts"])  # (n, blocks): expert of the selected token per block
        table[modality] = {
            "n": m["n"],
            "token_share": [m["tokens"][t] / m["n"] for t in range(num_tokens)],
            "expert_share_per_block": [
                [float((experts[:, b] == e).mean()) for e in range(int(experts.max()) + 1)]
                for b in range(experts.shape[1])]}
    return table


def _plot(routing: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = list(routing)
    tokens = len(next(iter(routing.values()))["token_share"])
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    width = 0.8 / tokens
    for t in range(tokens):
        ax.bar(np.arange(len(modalities)) + t * width - 0.4 + width / 2,
               [routing[m]["token_share"][t] for m in modalities], width, label=f"token {t}")
    ax.set_xticks(range(len(modalities)))
    ax.set_xticklabels([f"{m}\n(n={routing[m]['n']})" for m in modalities])
    ax.set_ylabel("share of prompts")
    ax.set_ylim(0, 1)
    ax.set_title("Expert token answering each prompt, by modality (held-out, box + point)")
    ax.legend(fontsize=8, ncol=tokens)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def held_out_setup(run_dir: Path | None, adapter: str) -> tuple:
    """(temporary folder or None, data folders, split, cache folder, adapter path) of a finished
    run (its data, split and cache; adapter "latest" = its last adapter) or, without a run, of
    freshly prepared sample data (adapter "default" = the shipped one)."""
    from segmote.build import DEFAULT_ADAPTER
    from segmote.data.cache import default_cache_dir
    from segmote.data.datasets import load_split
    from segmote.training.default_adapter import prepare

    if run_dir is not None:
        from segmote.training.config import load_config
        config = load_config(run_dir / "config.yaml")  # grouped or (older runs) flat keys
        data_dirs = [Path(p) for p in config.data.folders]
        adapter_path = run_dir / "adapter_latest.safetensors" if adapter == "latest" \
            else Path(adapter)
        cache = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
        return None, data_dirs, load_split(run_dir / "split.json"), cache, adapter_path
    tmp = tempfile.TemporaryDirectory()
    prepared = prepare(Path(tmp.name) / "data")
    adapter_path = Path(DEFAULT_ADAPTER) if adapter == "default" else Path(adapter)
    return tmp, prepared.data_dirs, load_split(prepared.split), Path(tmp.name) / "cache", \
        adapter_path


def run(run_dir: Path | None, adapter: str, out_name: str, engine: str = "torch") -> dict:
    import torch

    from segmote.adapter import read_adapter_metadata
    from segmote.build import load_model, resolve_weights
    from segmote.checkpoint import sha256_file
    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import discover, slice_samples
    from segmote.evaluation.prompted import Protocol, evaluate_samples, summarize_results
    from segmote.training.default_adapter import NOTES

    torch.manual_seed(0)
    tmp, data_dirs, split, cache_root, adapter_path = held_out_setup(run_dir, adapter)
    model = load_model(adapter=str(adapter_path), engine=engine)
    datasets = discover(data_dirs)
    samples = slice_samples(datasets, split, part="val", axis=2, min_foreground=20).samples
    weights_path, _ = resolve_weights("litemedsam", None)
    cache = EmbeddingCache(cache_root, model, f"litemedsam-{model.backbone_sha256[:16]}")
    protocols = [Protocol("box"), Protocol("point")]
    start = time.perf_counter()
    results = list(evaluate_samples(model, samples, protocols, cache=cache))
    seconds = time.perf_counter() - start
    summary = summarize_results(results)
    routing = _routing(results, model.config.num_expert_tokens)
    box, point = summary["box"], summary["point"]
    worst = min(box["adapter"]["datasets"][d]["dice"] - box["base"]["datasets"][d]["dice"]
                for d in box["base"]["datasets"])
    checks = {
        "box_mean_gain": box["adapter"]["mean"] - box["base"]["mean"],
        "box_worst_dataset_change": worst,
        "point_mean_gain": point["adapter"]["mean"] - point["base"]["mean"],
    }
    checks["box_gain_ok"] = checks["box_mean_gain"] >= 0.03
    checks["no_dataset_worse_ok"] = worst >= -0.01
    checks["point_not_worse_ok"] = checks["point_mean_gain"] >= 0
    timing = None
    if run_dir is not None and (run_dir / "train_time.json").is_file():
        timing = json.loads((run_dir / "train_time.json").read_text())
        rss = [line for line in (run_dir / "train_time.txt").read_text().splitlines()
               if "Maximum resident set size" in line] if (run_dir / "train_time.txt").is_file() \
            else []
        if rss:
            timing["peak_rss_mb"] = int(rss[0].split(":")[1]) / 1024
    meta = read_adapter_metadata(adapter_path)
    data = {
        "machine": machine(), "engine": engine,
        "adapter": str(adapter_path),
        "adapter_sha256": sha256_file(adapter_path),
        "backbone_sha256": sha256_file(weights_path),
        "protocols": [p.to_dict() for p in protocols],
        "held_out": {d: {"cases": split[d]["val"], "note": NOTES.get(d, "")} for d in split},
        "n_samples": len(samples), "eval_seconds": seconds,
        "summary": summary, "routing": routing, "checks": checks, "training": timing,
        "training_metadata": meta.get("training"),
    }
    write_result(out_name, data)
    if timing is not None:  # kept apart: a later report on the shipped adapter has no run
        write_result(f"{out_name}_training", {"machine": data["machine"], **timing,
                                              "run": str(run_dir), "adapter": str(adapter_path),
                                              "adapter_sha256": data["adapter_sha256"]})
    if engine == "torch":  # the published plot is PyTorch's; an engine run only compares
        DOCS.mkdir(exist_ok=True)
        _plot(routing, DOCS / "default_adapter_routing.png")
    if tmp is not None:
        tmp.cleanup()
    return data


def print_report(data: dict) -> None:
    box, point = data["summary"]["box"], data["summary"]["point"]
    print(f"held-out report ({data['n_samples']} (slice, class) samples, "
          f"{data['eval_seconds']:.0f} s)")
    print(f"{'dataset':32s} {'n':>5s} {'box base':>9s} {'box ours':>9s} "
          f"{'pt base':>8s} {'pt ours':>8s}")
    for d in box["base"]["datasets"]:
        b, a = box["base"]["datasets"][d], box["adapter"]["datasets"][d]
        pb, pa = point["base"]["datasets"][d], point["adapter"]["datasets"][d]
        print(f"{d:32s} {b['n']:5d} {b['dice']:9.4f} {a['dice']:9.4f} {pb['dice']:8.4f} "
              f"{pa['dice']:8.4f}")
    print(f"{'mean over datasets':32s} {'':5s} {box['base']['mean']:9.4f} "
          f"{box['adapter']['mean']:9.4f} {point['base']['mean']:8.4f} "
          f"{point['adapter']['mean']:8.4f}")
    print("checks:", json.dumps(data["checks"]))
    for modality, r in data["routing"].items():
        print(f"routing {modality:28s} n={r['n']:5d} token shares "
              + " ".join(f"{s:.2f}" for s in r["token_share"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished default-adapter run folder")
    parser.add_argument("--adapter", default=None,
                        help="adapter file (default: the run's latest, or the shipped one)")
    parser.add_argument("--engine", default="torch",
                        help="torch (default) or an inference engine for the encoder "
                             "(openvino, onnxruntime): its table is written apart, as "
                             "default_adapter_<engine>.json, to compare with PyTorch's")
    args = parser.parse_args()
    adapter = args.adapter or ("latest" if args.run else "default")
    name = "default_adapter" if args.engine == "torch" else f"default_adapter_{args.engine}"
    data = run(args.run, adapter, name, args.engine)
    print_report(data)
    print(f"wrote {RESULTS / (name + '.json')}"
          + (f" and {DOCS / 'default_adapter_routing.png'}" if args.engine == "torch" else ""))


if __name__ == "__main__":
    main()
