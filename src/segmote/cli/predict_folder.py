"""`segmote predict -i IN_DIR -o OUT_DIR`: the flags of `segmote predict` turned into a run over
a folder of cases (`segmote.predict.folder`); one line per failed case, a summary, exit 1 when
any case failed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segmote.errors import InputError

# Flags that name one image's prompts or figures; a folder takes prompts from --prompts.
_SINGLE_IMAGE_FLAGS = (("--box", "box"), ("--point", "point"), ("--label", "label"),
                       ("--overlay", "overlay"), ("--attention", "attention"),
                       ("--routing", "routing"), ("--text", "text"))


def run_folder(args: argparse.Namespace, label_names: dict[int, str],
               classes: list[str] | None) -> int:
    from segmote.predict.cases import list_cases, read_prompts_file
    from segmote.predict.folder import predict_folder

    for flag, key in _SINGLE_IMAGE_FLAGS:
        if getattr(args, key):
            raise InputError(f"{flag}: -i {args.input} is a folder of cases; give per-case "
                             "prompts in a JSON file with --prompts (or --auto)")
    out_dir = Path(args.output)
    if out_dir.is_file():
        raise InputError(f"{out_dir}: -o must be a folder when -i is a folder of cases")
    cases = list_cases(args.input)
    prompts = read_prompts_file(args.prompts, cases) if args.prompts else {}
    missing = [c.name for c in cases if c.name not in prompts]
    if missing and not args.auto:
        where = f"in {args.prompts}" if args.prompts else "(no --prompts file)"
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise InputError(f"no prompts {where} for {len(missing)} case(s): {shown}; give them "
                         "there, or --auto to segment those without prompts")
    if classes is not None and not args.auto:
        raise InputError("--classes goes with --auto")

    def make(device: str):
        from segmote.api import predict_file

        def predict_case(case, out: Path) -> Path:
            p = prompts.get(case.name)
            if p is None:
                kind = {"auto": True, "classes": classes}
            elif p.boxes or p.points:
                kind = {"boxes": p.boxes, "points": p.points, "labels": p.labels,
                        "text": p.text[0] if p.text else None}
            else:  # class names alone: prompt-free segmentation of those classes
                kind = {"auto": True, "classes": p.text}
            result = predict_file(
                case.path, out, backbone=args.backbone, checkpoint=args.checkpoint,
                adapter=args.adapter, modality=args.modality, window=args.window, axis=args.axis,
                device=device, threshold=args.threshold, label_names=label_names, **kind)
            print(result.output, flush=True)  # by the rank that wrote it
            return result.output
        return predict_case

    report = predict_folder(cases, out_dir, make, progress=not args.quiet, device=args.device)
    if report.rank == 0:
        print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1
