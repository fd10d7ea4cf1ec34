"""`segmote presence`: train the class presence head of a finished run's adapter, so that the
automatic mode drops classes an image cannot hold (`segmote.training.presence`).

    segmote presence RUN_DIR --negatives other-modalities [--adapter FILE] [-o OUT]
"""

from __future__ import annotations

import argparse

from segmote.cli.recalibrate import add_run_arguments
from segmote.training.presence import NEGATIVES  # the module loads torch only when it trains


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presence", help="train the class presence head of a trained adapter",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "extend")
    p.add_argument("--negatives", required=True, choices=NEGATIVES,
                   help="absent queries to learn from (other-modalities: only where the "
                        "modalities image disjoint anatomy)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segmote.training.presence import train_presence

    entry = train_presence(args.run_dir, args.negatives, args.adapter, args.out, args.device,
                           progress=True)
    c = entry["training_counts"]
    print(f"presence head: {entry['slices']} training slices, {entry['epochs']} epochs, "
          f"{entry['seconds']} s; on its training slices it keeps {c['present_kept']}/"
          f"{c['present']} present and {c['absent_kept']}/{c['absent']} absent queries")
    return 0
