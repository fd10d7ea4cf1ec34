"""`segmote info`: the model's parts with trainable vs total parameters, and the adapter size.

A thin argparse wrapper over :func:`segmote.build.load_model` and :mod:`segmote.summary`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` sub-command."""
    parser = subparsers.add_parser(
        "info",
        help="show the model's modules with trainable and total parameter counts",
        description=("Build the backbone (and adapter), then print one line per module: "
                     "trainable parameters, total parameters; then the totals and the adapter "
                     "size in MB."),
    )
    parser.add_argument("-b", "--backbone", default="litemedsam", metavar="NAME",
                        help="base model (default: litemedsam)")
    parser.add_argument("-c", "--checkpoint", type=Path, metavar="FILE",
                        help="weights of the backbone (required for the SAM / MedSAM ViTs)")
    parser.add_argument("-a", "--adapter", default=None, metavar="PATH|new|none",
                        help="adapter file, `new` (a freshly initialised adapter: what training "
                             "starts from) or `none` (the base model); default: the shipped "
                             "adapter (LiteMedSAM), `new` for other backbones")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary; return the exit status."""
    from segmote.build import DEFAULT_ADAPTER, load_model
    from segmote.summary import format_summary, parameter_summary

    default = DEFAULT_ADAPTER if args.backbone == "litemedsam" else "new"
    choice = args.adapter if args.adapter is not None else default
    adapter = None if str(choice).lower() == "none" else choice
    model = load_model(args.backbone, args.checkpoint, adapter=adapter)
    label = {None: "none (base model)", "new": "new (freshly initialised)"}.get(adapter, adapter)
    print(f"backbone: {args.backbone}    adapter: {label}")
    card = getattr(model, "card", None)
    if card is not None:
        print(f"  segmote_version: {card.segmote_version}")
        print(f"  vocabulary: {list(card.vocabulary)}")
        print(f"  training_data: { {d: list(n) for d, n in card.training_data.items()} }")
        if card.training_modalities is not None:
            print(f"  training_modalities: {card.training_modalities}")
            asked = {m: len(card.classes_for_modality(m) or ())
                     for m in dict.fromkeys(card.training_modalities.values()) if m}
            print("  --auto asks, per modality: " +
                  ", ".join(f"{m} {n} class{'es' if n != 1 else ''}"
                            for m, n in asked.items()))
        if card.presence is not None:
            p = card.presence
            print(f"  presence head: threshold {p.threshold}, negatives {p.negatives}, "
                  f"trained on {p.slices} slices")
    print(format_summary(parameter_summary(model)))
    from segmote.model_files import describe
    print("model files:")
    for name, folder, source in describe():
        print(f"  {name}: {folder} ({source})")
    return 0
