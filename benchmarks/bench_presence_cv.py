"""Cross-validation of the class presence head on the default adapter's training cases (issue 5):
how its negatives were chosen, without looking at the held-out split.

    python benchmarks/bench_presence_cv.py [--run RUN_DIR]    # a run's data and cache, or fresh

Fold k leaves out the k-th training case (sorted names) of every dataset with at least two
training cases (the CT dataset has one training patient: it is never left out), k = 0, 1, 2. For
each choice of negatives (`segmote.training.presence.NEGATIVES` but "dataset-absent" alone, which
gives the nuclei and brain classes no negative at all) a head is trained on the remaining
training slices exactly as `train_presence` trains it, and every query of the left-out slices is
scored at the head's threshold: present classes (should be kept), classes of the slice's dataset
with no pixel there (same-dataset absent) and classes of other modalities (should be dropped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_default_adapter import held_out_setup  # noqa: E402
from common import machine, write_result  # noqa: E402

SETTINGS = ("other-modalities", "both")
FOLDS = 3


def _queries(run_dir: Path | None) -> tuple:
    """(training items with every answer, their image summaries, text embeddings, other-modality
    classes per dataset, split, temporary folder or None)."""
    import torch

    from segmote.build import load_model
    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import discover, slice_samples
    from segmote.modeling.presence import image_summary
    from segmote.training.config import load_config
    from segmote.training.default_adapter import config_path
    from segmote.training.loader import other_modality_classes
    from segmote.training.presence import slice_targets
    from segmote.training.run_data import class_table, class_texts

    tmp, data_dirs, split, cache_root, adapter = held_out_setup(run_dir, "default")
    cfg = load_config(config_path("text"))
    model = load_model(adapter=str(adapter))
    samples = slice_samples(discover(data_dirs), split, part="train", axis=cfg.data.axis,
                            min_foreground=cfg.data.min_foreground).samples
    names = sorted(model.card.vocabulary or {s.class_name for s in samples})
    texts, _ = class_texts(cfg, names)
    cache = EmbeddingCache(cache_root, model, f"{cfg.model.backbone}-{model.backbone_sha256[:16]}",
                           cfg.data.window)
    cache.build(samples, progress=False)
    summary_of = {}

    def labels_of(s):
        cached = cache.get(s)
        summary_of[id(s)] = image_summary(cached.image_embedding[None])[0]
        return set(torch.unique(cached.label).tolist())

    other = other_modality_classes(samples)
    items = [(s, {n: y for n, y in t.items() if n in texts})
             for s, t in slice_targets(samples, class_table(samples), other, labels_of)]
    return items, [summary_of[id(s)] for s, _ in items], texts, other, split, tmp


def _kind(name: str, answer: int, dataset: str, other: dict) -> str:
    if answer:
        return "present"
    return "other_modality" if name in other.get(dataset, ()) else "dataset_absent"


def run(run_dir: Path | None) -> dict:
    import torch

    from segmote.modeling.presence import PresenceHead
    from segmote.training.presence import (THRESHOLD, PresenceSettings, fit_presence,
                                           learned_queries)

    start = time.perf_counter()
    items, summaries, texts, other, split, tmp = _queries(run_dir)
    folds = {d: sorted(e["train"]) for d, e in split.items() if len(e["train"]) >= 2}
    text_dim = len(next(iter(texts.values())))
    results: dict = {}
    for negatives in SETTINGS:
        counts: dict = {}
        for k in range(FOLDS):
            out = {d: cases[k % len(cases)] for d, cases in folds.items()}
            train = [i for i, (s, _) in enumerate(items) if out.get(s.dataset) != s.case_id]
            test = [i for i, (s, _) in enumerate(items) if out.get(s.dataset) == s.case_id]
            settings = PresenceSettings(negatives=negatives)
            torch.manual_seed(settings.seed)  # as `add_presence_head` does
            head = PresenceHead(summaries[0].shape[0] // 2, text_dim)
            chosen = learned_queries([items[i] for i in train], other, negatives)
            fit_presence(head, chosen, [summaries[i] for i in train], texts, settings)
            with torch.inference_mode():
                for i in test:
                    s, t = items[i]
                    names = sorted(t)
                    p = torch.sigmoid(head(summaries[i][None],
                                           torch.stack([texts[n] for n in names]).float()))
                    for n, prob in zip(names, p.tolist()):
                        kind = _kind(n, t[n], s.dataset, other)
                        e = counts.setdefault(s.dataset, {}).setdefault(kind, [0, 0])
                        e[0] += int(prob >= THRESHOLD)
                        e[1] += 1
        results[negatives] = {d: {kind: {"kept": v[0], "queries": v[1]} for kind, v in c.items()}
                              for d, c in sorted(counts.items())}
    data = {"machine": machine(), "folds": FOLDS,
            "left_out": {d: [cases[k % len(cases)] for k in range(FOLDS)]
                         for d, cases in folds.items()},
            "never_left_out": sorted(d for d in split if d not in folds),
            "threshold": THRESHOLD, "results": results,
            "seconds": round(time.perf_counter() - start, 1)}
    write_result("presence_cv", data)
    if tmp is not None:
        tmp.cleanup()
    return data


def totals(result: dict) -> dict:
    """kind -> [kept, queries] summed over datasets."""
    out: dict = {}
    for per in result.values():
        for kind, e in per.items():
            t = out.setdefault(kind, [0, 0])
            t[0] += e["kept"]
            t[1] += e["queries"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished run folder (its data and cache)")
    data = run(ap.parse_args().run)
    for negatives, result in data["results"].items():
        print(negatives, json.dumps(totals(result)))
        for d, per in result.items():
            print(f"  {d}: " + ", ".join(f"{k} {e['kept']}/{e['queries']} kept"
                                          for k, e in per.items()))


if __name__ == "__main__":
    main()
