"""`segmote evaluate`: Dice, NSD and HD95 of a folder of predictions against ground truth.

A thin argparse wrapper over :func:`segmote.evaluation.evaluate.evaluate_folders`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted label maps against ground truth (Dice, NSD, HD95)",
        description=(
            "Pair label maps in --pred and --gt by case name (CASE.nii.gz, CASE_seg.nrrd, CASE.png), "
            "score every class, write a per-case CSV and a .summary.json beside it."
        ),
    )
    parser.add_argument("-p", "--pred", type=Path, required=True, metavar="DIR",
                        help="folder of predicted label maps")
    parser.add_argument("-g", "--gt", type=Path, required=True, metavar="DIR",
                        help="folder of ground-truth label maps")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="CSV",
                        help="per-case-and-class CSV; the summary goes to <stem>.summary.json")
    parser.add_argument("-l", "--labels", type=Path, metavar="JSON",
                        help="dataset.json whose 'labels' name the classes (default: all non-zero "
                             "values in the ground truth)")
    parser.add_argument("--nsd-mm", type=float, default=2.0, metavar="MM",
                        help="NSD tolerance in mm (default: 2)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="count ground-truth cases without prediction as empty predictions")
    parser.add_argument("--empty-as-one", action="store_true",
                        help="count a --labels class absent from prediction and ground truth of "
                             "every case as Dice 1 in the overall mean (default: listed apart)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print a compact table, return the exit status."""
    # Imported here so that `segmote --help` stays fast.
    from segmote.evaluation.evaluate import evaluate_folders, load_labels

    labels = load_labels(args.labels) if args.labels else None
    summary = evaluate_folders(
        args.pred,
        args.gt,
        labels=labels,
        nsd_mm=args.nsd_mm,
        out_csv=args.out,
        allow_missing=args.allow_missing,
        progress=not args.quiet and sys.stderr.isatty(),
        labels_file=args.labels,
        empty_as_one=args.empty_as_one,
    )
    for note in summary.notes():  # even with --quiet: they change how the numbers read
        print(f"note: {note}", file=sys.stderr)
    if not args.quiet:
        print(summary.format_table())
        if summary.missing:
            print(f"{len(summary.missing)} case(s) without prediction counted as empty")
        print(f"wrote {summary.csv_path} and {summary.json_path}")
    return 0
