"""`segmote predict -i IN_DIR -o OUT_DIR`: the flags of `segmote predict` turned into a run over
a folder of cases (`segmote.predict.folder`); one line per failed case, a summary, exit 1 when
any case failed."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segmote.errors import InputError
from segmote.io.image import split_ext
from segmote.io.writers import WRITE_FORMATS

if TYPE_CHECKING:
    from segmote.predict.pipeline import PredictOptions

# Flags that set one image's prompts or figures; a folder takes its prompts from --prompts.
_SINGLE_IMAGE_FLAGS = (("--box", "box"), ("--point", "point"), ("--label", "label"),
                       ("--text", "text"), ("--overlay", "overlay"),
                       ("--attention", "attention"), ("--routing", "routing"))


def run_folder(args: argparse.Namespace, base: "PredictOptions") -> int:
    """Run `segmote predict` over the folder of cases `args.input`, each case with `base` (the
    options of the flags) and its own prompts."""
    from segmote.predict.cases import list_cases, read_prompts_file
    from segmote.predict.folder import case_request, predict_folder

    for flag, key in _SINGLE_IMAGE_FLAGS:
        if getattr(args, key):
            raise InputError(f"{flag}: -i {args.input} is a folder of cases; give per-case "
                             "prompts in a JSON file with --prompts (or --auto)")
    out_dir = Path(args.output)
    if out_dir.is_file():
        raise InputError(f"{out_dir}: -o must be a folder when -i is a folder of cases")
    ending = args.output_ending
    if ending is not None and split_ext(f"case{ending}")[1] not in WRITE_FORMATS:
        raise InputError(f"--output-ending {ending!r}: use one of "
                         f"{' '.join(sorted(WRITE_FORMATS))} (or .seg.nrrd)")
    cases = list_cases(args.input)
    prompts = read_prompts_file(args.prompts, cases) if args.prompts else {}
    missing = [c.name for c in cases if c.name not in prompts]
    if missing and not args.auto:
        where = f"in {args.prompts}" if args.prompts else "(no --prompts file)"
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise InputError(f"no prompts {where} for {len(missing)} case(s): {shown}; give them "
                         "there, or --auto to segment those without prompts")
    if base.classes is not None and not args.auto:
        raise InputError("--classes goes with --auto")
    base = dataclasses.replace(base, auto=False, progress=False)

    def make(device: str):
        from segmote.predict.pipeline import ModelCache, predict_file

        models = ModelCache()  # loaded by the first case, reused by every other case

        def predict_case(case, out: Path) -> Path:
            numbers, opts = case_request(prompts.get(case.name),
                                         dataclasses.replace(base, device=device))
            written = predict_file(case.path, out, numbers, opts, models).output
            print(written, flush=True)  # by the rank that wrote it
            return written
        return predict_case

    report = predict_folder(cases, out_dir, make, ending, progress=not args.quiet,
                            device=args.device)
    if report.rank == 0:
        print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1
