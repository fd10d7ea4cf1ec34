"""`segmote` command line: one sub-command per job, each a thin wrapper over a typed function.

Every sub-command lives in its own module under ``segmote.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a ``run(args) -> int``.
Expected failures raise :class:`segmote.errors.SegmoteError`; they are printed as one line on
stderr with exit status 1 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from segmote import __version__
from segmote.errors import ParameterError, SegmoteError

# Sub-command modules, in the order they appear in `segmote --help`.
COMMANDS = ("predict", "samples", "info", "evaluate", "evaluate_model", "train", "curate",
            "presence", "recalibrate", "export", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmote",
        description="SegMoTE: promptable and automatic medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"segmote {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"segmote.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"segmote.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def _one_line_warning(command: str):
    """warnings.showwarning that prints `segmote COMMAND: warning: MESSAGE`, one line (Python's
    default adds the source file, line number and code of the library that warned)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"segmote {command}: warning: {message}", file=sys.stderr)
    return show


def flag_names(err: ParameterError, args: argparse.Namespace) -> dict[str, str]:
    """The flag of each parameter a library error names: the command's own table (`flags`,
    set by its `register`), else the parameter spelled as a long flag (`nsd_mm` -> --nsd-mm)."""
    table = getattr(args, "flags", {})
    return {p: table.get(p, "--" + p.replace("_", "-")) for p in err.params()}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args.func(args) or 0)
    except ParameterError as err:
        print(f"segmote {args.command}: error: {err.render(flag_names(err, args))}",
              file=sys.stderr)
        return 1
    except SegmoteError as err:
        print(f"segmote {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"segmote {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
