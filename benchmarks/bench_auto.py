"""Prompt-free (PPT) and text prompts of an adapter on held-out data (issue 5).

    python benchmarks/bench_auto.py --run runs/default_adapter_ppt   # a finished run
    python benchmarks/bench_auto.py                                  # the shipped adapter

Held-out = the "val" part of the run's split (see bench_default_adapter.py for how honest each
hold-out is). Every held-out (slice, class) with >= 20 foreground pixels, under the protocols of
`segmote.evaluation.prompted`: box, box_text (box + class name), text (class name alone: PPT,
the mask at the class's calibrated offset; one query per slice and class) and auto (text with
the adapter's calibrated confidence threshold). Absent classes: on
every held-out slice, every class of its dataset with no pixel there is asked for in automatic
mode; a kept non-empty mask is a false positive. Classes of other modalities: on every held-out
slice, every class that no dataset of its modality labels (nuclei on a CT slice, AAL structures
on the nuclei image), the same way. Cost: one automatic multi-class pass on a 2-D
image vs one encoder pass, same process, median of repeats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_default_adapter import held_out_setup  # noqa: E402
from common import RESULTS, machine, median_time, write_result  # noqa: E402

BINARY = ("Dataset005_NucleiQuadrants", "Dataset007_Colin27BrainSlabs")


def _false_positives(seg, samples, cache, ask) -> dict:
    """False-positive rate of automatic mode on every held-out slice: ask(dataset, present
    label values) names the classes to query there (all absent); a kept mask is a false
    positive."""
    import torch

    from segmote.data.files import read_label
    from segmote.slicing import volume_slice
    from segmote.modeling.encoder_output import EncoderOutput

    by_slice: dict = {}
    for s in samples:
        by_slice.setdefault((s.dataset, str(s.label), s.slice_index, s.axis), s)
    out: dict = {}
    labels: dict = {}
    for (dataset, label_path, k, axis), s in by_slice.items():
        if label_path not in labels:
            labels = {label_path: read_label(label_path)}
        plane = labels[label_path] if k is None else volume_slice(labels[label_path], k, axis)
        names = ask(dataset, set(np.unique(plane).tolist()))
        if not names:
            continue
        cached = cache.get(s)
        enc = EncoderOutput(cached.image_embedding[None], cached.early_features[None])
        with torch.inference_mode():
            seg.set_features(seg.model.prepare_image(enc), cached.geometry.orig_hw)
        pred = seg.predict_auto(names)
        e = out.setdefault(dataset, {"slices": 0, "queries": 0, "false_positives": 0})
        e["slices"] += 1
        e["queries"] += len(names)
        e["false_positives"] += sum(pred.kept.values())
    for e in out.values():
        e["fp_rate"] = e["false_positives"] / e["queries"]
    total_q = sum(e["queries"] for e in out.values())
    total_fp = sum(e["false_positives"] for e in out.values())
    return {"per_dataset": out, "queries": total_q, "false_positives": total_fp,
            "fp_rate": total_fp / total_q if total_q else None}


def _absent(seg, samples, cache) -> dict:
    """Classes of the slice's own dataset with no pixel there."""
    classes: dict[str, dict[str, set]] = {}
    for s in samples:
        classes.setdefault(s.dataset, {}).setdefault(s.class_name, set()).add(int(s.class_value))
    return _false_positives(seg, samples, cache, lambda d, present: [
        c for c, values in classes[d].items() if not values & present])


def _other_modalities(seg, samples, cache, datasets) -> dict:
    """Classes that no dataset of the slice's modality labels (an AAL structure on the nuclei
    image, nuclei on a CT slice): absent by construction, as long as the modalities image
    disjoint anatomy, as these do. Only classes the adapter knows are asked for."""
    from types import SimpleNamespace

    from segmote.training.loader import other_modality_classes

    known = set(seg.vocabulary)
    other = other_modality_classes([SimpleNamespace(dataset=d.name, modality=d.modality,
                                                    class_name=name)
                                    for d in datasets for name in d.labels.values()])
    data = _false_positives(seg, samples, cache,
                            lambda d, present: [c for c in other.get(d, []) if c in known])
    data["classes_asked"] = {d: len([c for c in names if c in known])
                             for d, names in other.items()}
    return data


def _cost(seg, image: np.ndarray, classes: list[str], repeats: int = 5) -> dict:
    """Encoder pass vs encoder pass + automatic pass over `classes`, 2-D image."""
    t_encode = median_time(lambda: seg.set_image(image), repeats)
    seg.embed_text(classes)  # the text embeddings are cached per Segmenter (and per vocabulary)

    def both() -> None:
        seg.set_image(image)
        seg.predict_auto(classes)

    t_auto = median_time(both, repeats)
    per_class = (t_auto - t_encode) / len(classes) / t_encode
    return {"classes": len(classes), "encoder_s": t_encode, "encoder_plus_auto_s": t_auto,
            "per_class_fraction_of_encoder": per_class, "repeats": repeats}


def _fresh_ppt_segmenter():
    import torch

    from segmote.predict.segmenter import Segmenter
    from segmote.text.classes import class_embeddings
    from segmote.training.config import load_config
    from segmote.training.trainer import build_model

    dim = class_embeddings(["probe"]).dim
    return Segmenter(build_model(load_config(), torch.device("cpu"), dim).eval())


def _nuclei_image() -> np.ndarray:
    from segmote.io import read_image
    from segmote.samples import bundled_sample_path

    return read_image(bundled_sample_path("nuclei")).array


def run(run_dir: Path | None, adapter: str, absent_only: str | None = None) -> dict:
    """The whole benchmark (results/auto.json), or with absent_only=NAME only the two
    false-positive parts (results/NAME.json)."""
    import torch

    from segmote.build import load_model
    from segmote.checkpoint import sha256_file
    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import discover, slice_samples
    from segmote.evaluation.prompted import Protocol, evaluate_samples, summarize_results
    from segmote.io import read_image
    from segmote.predict.segmenter import Segmenter
    from segmote.training.default_adapter import NOTES

    torch.manual_seed(0)
    tmp, data_dirs, split, cache_root, adapter_path = held_out_setup(run_dir, adapter)
    model = load_model(adapter=str(adapter_path))
    seg = Segmenter(model)
    if not (seg.prompt_free and seg.takes_text):
        # the shipped adapter of this version has neither: no accuracy to measure, but the cost
        # of an automatic pass does not depend on the weights: measure it on a fresh one
        print(f"{adapter_path}: not trained with PPT and text prompts; measuring the cost only")
        data = {"machine": machine(), "adapter": "fresh (untrained) PPT + text adapter",
                "cost": _cost(_fresh_ppt_segmenter(), _nuclei_image(), [f"class {i}"
                                                                       for i in range(8)])}
        write_result("auto", data)
        if tmp is not None:
            tmp.cleanup()
        return data
    datasets = discover(data_dirs)
    samples = slice_samples(datasets, split, part="val", axis=2, min_foreground=20).samples
    cache = EmbeddingCache(cache_root, model, f"litemedsam-{model.backbone_sha256[:16]}")
    if absent_only:
        data = {"machine": machine(), "adapter": str(adapter_path),
                "adapter_sha256": sha256_file(adapter_path),
                "absent": _absent(seg, samples, cache),
                "other_modalities": _other_modalities(seg, samples, cache, datasets)}
        write_result(absent_only, data)
        if tmp is not None:
            tmp.cleanup()
        return data
    protocols = [Protocol(p) for p in ("box", "box_text", "text", "auto")]
    start = time.perf_counter()
    results = list(evaluate_samples(model, samples, protocols, cache=cache))
    seconds = time.perf_counter() - start
    summary = summarize_results(results)
    ours = {p: summary[p]["adapter"] for p in summary}
    ratios = {d: ours["auto"]["datasets"][d]["dice"] / ours["box"]["datasets"][d]["dice"]
              for d in BINARY if d in ours["box"]["datasets"]}
    absent = _absent(seg, samples, cache)
    other = _other_modalities(seg, samples, cache, datasets)
    nuclei = next((d for d in datasets if d.name == "Dataset005_NucleiQuadrants"), None)
    cost = None
    if nuclei is not None:
        image = read_image(nuclei.cases[0].image).array
        cost = _cost(seg, image, seg.vocabulary[:8])
    checks = {
        "prompt_free_over_box": ratios,
        "prompt_free_ok": bool(ratios) and all(r >= 0.85 for r in ratios.values()),
        "text_box_gain": ours["box_text"]["mean"] - ours["box"]["mean"],
        "text_box_ok": ours["box_text"]["mean"] >= ours["box"]["mean"],
        "absent_fp_rate": absent["fp_rate"],
        "absent_fp_ok": absent["fp_rate"] is not None and absent["fp_rate"] < 0.10,
        "other_modality_fp_rate": other["fp_rate"],
        "other_modality_fp_ok": other["fp_rate"] is not None and other["fp_rate"] < 0.10,
        "auto_per_class_cost": cost and cost["per_class_fraction_of_encoder"],
        "auto_cost_ok": bool(cost) and cost["per_class_fraction_of_encoder"] < 0.10,
    }
    data = {"machine": machine(), "adapter": str(adapter_path),
            "adapter_sha256": sha256_file(adapter_path),
            "calibration": model.card.calibration and model.card.calibration.raw,
            "presence": model.card.presence and model.card.presence.raw,
            "protocols": [p.to_dict() for p in protocols],
            "held_out": {d: {"cases": split[d]["val"], "note": NOTES.get(d, "")} for d in split},
            "n_samples": len(samples), "eval_seconds": seconds, "summary": ours,
            "absent": absent, "other_modalities": other, "cost": cost, "checks": checks}
    write_result("auto", data)
    if tmp is not None:
        tmp.cleanup()
    return data


def print_report(data: dict) -> None:
    s = data["summary"]
    print(f"held-out ({data['n_samples']} (slice, class) samples, {data['eval_seconds']:.0f} s)")
    print(f"{'dataset':32s} {'n':>5s} " + " ".join(f"{p:>9s}" for p in s))
    for d in s["box"]["datasets"]:
        print(f"{d:32s} {s['box']['datasets'][d]['n']:5d} "
              + " ".join(f"{s[p]['datasets'][d]['dice']:9.4f}" for p in s))
    print(f"{'mean over datasets':32s} {'':5s} " + " ".join(f"{s[p]['mean']:9.4f}" for p in s))
    print("absent classes:", json.dumps(data["absent"]))
    print("classes of other modalities:", json.dumps(data["other_modalities"]))
    print("cost:", json.dumps(data["cost"]))
    print("checks:", json.dumps(data["checks"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished run folder (its split and cache)")
    ap.add_argument("--adapter", help="adapter file (default: the run's latest / the shipped)")
    ap.add_argument("--absent-only", metavar="NAME",
                    help="only the false-positive parts, written to results/NAME.json")
    args = ap.parse_args()
    data = run(args.run, args.adapter or ("latest" if args.run else "default"),
               args.absent_only)
    if args.absent_only:
        print("absent classes:", json.dumps(data["absent"]))
        print("classes of other modalities:", json.dumps(data["other_modalities"]))
        print(f"wrote {RESULTS / (args.absent_only + '.json')}")
        return
    if "summary" not in data:
        print("cost:", json.dumps(data["cost"]))
        return
    print_report(data)
    print(f"wrote {RESULTS / 'auto.json'}")


if __name__ == "__main__":
    main()
