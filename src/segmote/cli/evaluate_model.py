"""`segmote evaluate-model`: run models on a dataset's held-out split with a fixed prompt
protocol and compare them in one table.

    segmote evaluate-model --data Dataset001_Liver --model base default --prompt box point
    segmote evaluate-model --data A B --split runs/x/split.json --model base \\
        runs/x/adapter_latest.safetensors --prompt box clicks --clicks 5 -o results/x
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-model", help="run and score models on held-out data under "
                       "fixed prompt protocols (base vs adapters)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, metavar="DIR",
                   help="dataset folders (nnU-Net raw, MSD or images/ + labels/)")
    p.add_argument("-m", "--model", nargs="+", default=["base", "default"], metavar="MODEL",
                   help="base, default (the shipped adapter), new, or adapter files; compared "
                        "side by side (default: base default)")
    p.add_argument("--prompt", nargs="+", default=["box"], metavar="PROTOCOL",
                   help="box, box_jitter, point, clicks, box_text (box + class name), text "
                        "(class name alone, prompt-free), auto (text with the calibrated "
                        "confidence threshold); text protocols need a text + PPT adapter; "
                        "3-D (whole objects of volumes, 3-D Dice / NSD / HD95): box3d (jittered "
                        "3-D box, followed from its middle slice), box3d_every_slice (every "
                        "slice gets the box), key_box / key_point (a box / one click on the "
                        "slice with the most foreground, followed until the object ends)")
    p.add_argument("--split", metavar="JSON", help="split file (e.g. a training run's "
                   "split.json); default: the split `segmote train` draws")
    p.add_argument("--part", choices=("val", "train", "all"), default="val",
                   help="which cases to evaluate (default: val, the held-out ones)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the jittered box protocol")
    p.add_argument("--clicks", type=int, default=3, help="corrective clicks of 'clicks'")
    p.add_argument("--jitter", type=float, default=0.1, help="box_jitter: fraction of the box")
    p.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    p.add_argument("--min-foreground", type=int, default=20)
    p.add_argument("--backbone", default="litemedsam")
    p.add_argument("--checkpoint", help="weights file for the backbone (SAM / MedSAM ViTs)")
    p.add_argument("--cache-dir", help="embedding cache to read and fill (default SEGMOTE_HOME/"
                                       "embedding-cache, shared with curate and train)")
    p.add_argument("--engine", default="auto",
                   choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="what runs the image encoder (default auto: the fastest installed; "
                        "docs/engine.md)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="evaluate only these classes (names as in dataset.json)")
    p.add_argument("--nsd-mm", type=float, default=2.0,
                   help="NSD tolerance in mm of the 3-D protocols (default 2)")
    p.add_argument("-o", "--out", metavar="PREFIX",
                   help="write PREFIX.json (summary + metadata) and PREFIX.csv (per sample)")
    p.set_defaults(func=run, flags={"models": "--model", "prompts": "--prompt"})


def run(args: argparse.Namespace) -> int:
    from segmote.evaluation.model_eval import evaluate_models, output_paths, write_outputs
    from segmote.outputs import check_outputs

    if args.out:  # before any work: never over an input, a folder or an unwritable place
        json_path, csv_path = output_paths(args.out)
        check_outputs({"summary JSON": json_path, "per-sample CSV": csv_path},
                      {"split JSON": [Path(args.split)] if args.split else [],
                       "dataset folder": [Path(d) for d in args.data],
                       "adapter": [Path(m) for m in args.model if Path(m).is_file()]})
    result = evaluate_models(
        args.model, args.data, args.prompt, split_path=args.split, part=args.part,
        val_fraction=args.val_fraction, split_seed=args.split_seed, seed=args.seed,
        clicks=args.clicks, jitter=args.jitter, axis=args.axis,
        min_foreground=args.min_foreground, backbone=args.backbone,
        checkpoint=args.checkpoint, cache_dir=args.cache_dir, classes=args.classes,
        nsd_mm=args.nsd_mm, engine=args.engine)
    print(result.format_table())
    if args.out:
        json_path, csv_path = write_outputs(result, args.out)
        print(f"wrote {json_path} and {csv_path}")
    return 0
