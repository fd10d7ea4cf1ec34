"""`segmote train`: fit a SegMoTE adapter on nnU-Net / MSD / 2-D dataset folders.

    segmote train --data Dataset001_Liver Dataset002_Heart --out runs/liver_heart
    segmote train --data DIR --out RUN --config my.yaml --epochs 20
    segmote train --data A B --out RUN --balance dataset_class --split held_out.json
    segmote train --manifest manifest.json --out RUN   # exactly what `segmote curate` selected
    segmote train --out RUN --resume          # continue a stopped run where it stopped
    segmote train --data DIR --out RUN2 --init-adapter RUN/adapter_latest.safetensors \
        --config text_stage.yaml               # add text / PPT to a trained adapter
    torchrun --nproc_per_node 4 -m segmote.cli.main train --data DIR --out RUN   # 4 GPUs

Settings: defaults < RUN/config.yaml (with --resume) < --config YAML < flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segmote.errors import InputError
from segmote.precision import AMP_CHOICES

# flag -> config key, for the settings that have a flag of their own
_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
          "backbone": "backbone", "checkpoint": "checkpoint", "num_workers": "num_workers",
          "amp": "amp", "window": "window", "cache_dir": "cache_dir", "split": "split",
          "engine": "engine",
          "sampling_balance": "sampling_balance", "samples_per_epoch": "samples_per_epoch",
          "manifest": "manifest", "init_adapter": "init_adapter"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a SegMoTE adapter on your datasets",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", metavar="DIR",
                   help="dataset folders (nnU-Net raw, MSD or images/ + labels/); with --resume "
                        "the run's own folders by default")
    p.add_argument("-o", "--out", required=True, metavar="RUN_DIR",
                   help="run folder: config, split, metrics, logs, checkpoints")
    p.add_argument("-c", "--config", metavar="YAML", help="training config (keys of TrainConfig)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.add_argument("-e", "--epochs", type=int)
    p.add_argument("-b", "--batch-size", type=int, help="global batch (over all processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--backbone", help="base model (default litemedsam)")
    p.add_argument("--checkpoint", help="weights file for the backbone (SAM / MedSAM ViTs)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers")
    p.add_argument("--amp", choices=AMP_CHOICES,
                   help="mixed precision: auto = bf16 on a GPU (fp16 where it lacks bf16), "
                   "fp32 on a CPU; bf16 / fp16 on any device; none = fp32")
    p.add_argument("--split", metavar="JSON",
                   help="fixed train/val case split (as RUN_DIR/split.json) instead of a drawn one")
    p.add_argument("--manifest", metavar="JSON",
                   help="train on exactly the samples a `segmote curate` manifest selected "
                        "(instead of --data)")
    p.add_argument("--init-adapter", metavar="SAFETENSORS",
                   help="start from this adapter (a second stage; see train_parts in the config)")
    p.add_argument("--sampling-balance", "--balance", dest="sampling_balance",
                   choices=("none", "dataset", "dataset_class"),
                   help="draw samples so every dataset (and class) is seen equally often "
                        "(--balance: its older name)")
    p.add_argument("--samples-per-epoch", type=int, help="samples drawn per epoch")
    p.add_argument("-w", "--window", help="CT window for the cached images")
    p.add_argument("--cache-dir", help="embedding cache folder (default SEGMOTE_HOME/"
                                       "embedding-cache, shared with curate and evaluate-model)")
    p.add_argument("--engine", choices=("torch", "onnxruntime", "openvino", "auto"),
                   help="what encodes the embedding cache (default torch; docs/engine.md)")
    p.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=run, flags={"out_dir": "--out"})


def run(args: argparse.Namespace) -> int:
    from segmote.training.config import TrainConfig, load_config, merge, read_yaml
    from segmote.training.trainer import fit

    out = Path(args.out)
    base = TrainConfig()
    if args.resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise InputError(f"{out}: nothing to resume (no config.yaml)")
        base = merge(base, read_yaml(saved), str(saved))
    cfg = load_config(args.config, {key: getattr(args, flag) for flag, key in _FLAGS.items()},
                      base)
    data = args.data or cfg.data.folders
    if args.data and cfg.data.manifest:
        raise InputError("give either --data or --manifest, not both")
    if not data and not cfg.data.manifest:
        raise InputError("give the dataset folders with --data DIR [DIR ...] or a curation "
                         "manifest with --manifest JSON")
    if cfg.data.manifest:
        data = []
    result = fit(cfg, data, out, resume=args.resume, device=args.device,
                   progress=not args.quiet)
    print(result.best_adapter or result.latest_adapter)
    return 0
