"""`segmote curate`: a small, clean, balanced training set from large dataset folders.

    segmote curate --data Dataset001_Liver Task09_Spleen my2d/ --budget 5000 -o manifest.json
    segmote curate --data DIR --budget 1% -o manifest.json --report report.html --seed 1
    segmote curate --data DIR --budget 2000 -o m.json --weight 'MR/*=2' --threshold min_pixels=20
    segmote train --manifest manifest.json --out RUN      # trains on exactly the selection

Each (slice, class) mask is scored (clarity, contrast, entropy, foreground ratio, connected
components, mask sanity), near-duplicates are dropped using the frozen encoder's cached
embeddings, and up to the budget is drawn, balanced over modalities and over classes within
each (--balance cell: over modality x class cells). Settings: defaults < --config YAML (keys
of CurationConfig, "thresholds" a mapping) < flags. See docs/curation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from segmote.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="select a clean, balanced training subset (manifest)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="DIR",
                   help="dataset folders (nnU-Net raw, MSD or images/ + labels/)")
    p.add_argument("--budget", help="samples to select: a count (5000) or a percentage of all "
                                    "masks (1%%); default: every accepted sample")
    p.add_argument("-o", "--out", required=True, metavar="MANIFEST", help="manifest JSON to write")
    p.add_argument("--report", metavar="HTML", help="also write an HTML report")
    p.add_argument("-c", "--config", metavar="YAML", help="curation settings (CurationConfig)")
    p.add_argument("--seed", type=int)
    p.add_argument("--axis", type=int, nargs="+", choices=(0, 1, 2), dest="axes",
                   help="slice axis of volumes (default 2); several: every orientation")
    p.add_argument("--weight", action="append", metavar="MODALITY/CLASS=W",
                   help="balance weight of matching cells (wildcards; repeatable; default 1)")
    p.add_argument("--balance-power", type=float, metavar="P",
                   help="cell shares also proportional to (cell size) ** P: 0 equal (default), "
                        "0.5 square root, 1 proportional")
    p.add_argument("--balance", metavar="{cell,modality}",
                   help="equal shares per modality first, then per class within it "
                        "(default), or per (modality, class) cell")
    p.add_argument("--threshold", action="append", metavar="NAME=VALUE",
                   help="override a quality threshold (repeatable), e.g. min_pixels=20")
    p.add_argument("--dup-threshold", type=float,
                   help="cosine similarity of near-duplicates' vectors (default 0.96)")
    p.add_argument("--mask-threshold", type=float,
                   help="cosine similarity their mask parts must also reach (default 0.999)")
    p.add_argument("--no-dedup", action="store_true",
                   help="skip near-duplicate removal (no model, no embeddings)")
    p.add_argument("-w", "--window", help="CT window for scoring and encoding")
    p.add_argument("--cache-dir", help="embedding cache (default SEGMOTE_HOME/embedding-cache, "
                                       "shared with `segmote train` and `evaluate-model`)")
    p.add_argument("--backbone", default="litemedsam", help="encoder for the embeddings")
    p.add_argument("--checkpoint", help="weights file for the backbone (SAM / MedSAM ViTs)")
    p.add_argument("-d", "--device", default="cpu", help="device for the encoder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, flags={"weights": "--weight"})


def _pairs(items: list[str] | None, flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"{flag}: expected NAME=NUMBER, got {item!r}")
    return out


def load_curation_config(args: argparse.Namespace):
    """defaults < --config YAML < flags -> a validated CurationConfig."""
    from segmote.curation.pipeline import CurationConfig
    from segmote.training.config import read_yaml

    cfg = CurationConfig()
    if args.config:
        values = read_yaml(args.config)
        known = {f.name for f in dataclasses.fields(CurationConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{args.config}: unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        if not isinstance(values.get("thresholds", {}), dict) or \
                not isinstance(values.get("weights", []), list):
            raise InputError(f"{args.config}: 'thresholds' must be a mapping and 'weights' a "
                             "list of MODALITY/CLASS=W")
        cfg = dataclasses.replace(cfg, **values)
    flags = {"budget": args.budget, "seed": args.seed, "axes": args.axes,
             "dup_threshold": args.dup_threshold, "mask_threshold": args.mask_threshold,
             "window": args.window, "balance_power": args.balance_power,
             "balance": args.balance}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    cfg.weights = list(cfg.weights) + list(args.weight or [])
    cfg.thresholds = {**cfg.thresholds, **_pairs(args.threshold, "--threshold")}
    if args.no_dedup:
        cfg.dedup = False
    return cfg.validate()


def _embedding_cache(args: argparse.Namespace, window: str | None):
    from segmote.build import load_model, resolve_weights
    from segmote.checkpoint import sha256_file
    from segmote.data.cache import EmbeddingCache, default_cache_dir
    model = load_model(args.backbone, args.checkpoint, adapter=None, device=args.device)
    path, expected = resolve_weights(args.backbone, args.checkpoint)
    # the trainer's backbone id, so `segmote train --cache-dir` reuses these entries
    backbone_id = f"{args.backbone}-{(expected or sha256_file(path))[:16]}"
    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    return EmbeddingCache(root, model, backbone_id, window)


def run(args: argparse.Namespace) -> int:
    from segmote.curation.manifest import write_manifest
    from segmote.curation.pipeline import curate
    from segmote.curation.report import write_report
    from segmote.data.datasets import discover

    for flag, value in (("-o", args.out), ("--report", args.report)):
        if value is not None and not Path(value).parent.is_dir():
            raise InputError(f"{flag} {value}: folder {Path(value).parent} does not exist")
    cfg = load_curation_config(args)
    datasets = discover([Path(d) for d in args.data])
    cache = _embedding_cache(args, cfg.window) if cfg.dedup else None
    result = curate(datasets, cfg, cache, progress=not args.quiet)
    # report first: the manifest appears only once everything it refers to is written
    if args.report:
        write_report(result, args.report)
    write_manifest(result, args.out)
    s = result.summary()
    print(f"{s['candidates']} masks: {s['selected']} selected, {s['rejected']} rejected "
          f"({', '.join(f'{k} {v}' for k, v in s['rejected_by_reason'].items()) or 'none'}), "
          f"{s['accepted_not_selected']} over budget -> {args.out}")
    return 0
