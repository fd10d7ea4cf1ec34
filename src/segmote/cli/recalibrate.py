"""`segmote recalibrate`: redo the prompt-free calibration of a finished run's adapter (per-class
mask offsets, the confidence threshold, text beside a box) without training; the weights are
copied unchanged (`segmote.training.recalibrate`).

    segmote recalibrate RUN_DIR [--adapter FILE] [-o OUT]
"""

from __future__ import annotations

import argparse


def add_run_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """The arguments every post-training step on a finished run shares."""
    p.add_argument("run_dir", help="a finished `segmote train` run folder")
    p.add_argument("--adapter", help=f"adapter to {verb} (default RUN_DIR/adapter_latest."
                                     "safetensors)")
    p.add_argument("-o", "--out", help="where to write it (default: over --adapter)")
    p.add_argument("--device", default=None, help="cpu / cuda (default cpu)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recalibrate", help="redo a trained adapter's prompt-free calibration",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "calibrate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segmote.training.recalibrate import recalibrate

    auto = recalibrate(args.run_dir, args.adapter, args.out, args.device)
    off = auto["mask_offsets"]
    print(f"threshold {auto['threshold']}, default mask offset {auto['mask_offset_default']}, "
          f"{len(off)} classes with their own offset; calibration Dice "
          f"{auto['dice_no_offset']} -> {auto['dice_raw']} (offsets) -> {auto['dice']} "
          f"(threshold), absent-class FP rate {auto['fp_rate']} (n {auto['n_present']} present, "
          f"{auto['n_absent']} absent); box Dice {auto['box_dice']}, with the text "
          f"{auto['box_text_dice']}, with the text where kept {auto['box_text_dice_kept']} "
          f"(text used beside prompts: {auto['text_beside_prompt_default']})")
    return 0
