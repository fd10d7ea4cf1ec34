"""`segmote predict`: segment a 2-D image or a 3-D volume from box / point / text prompts, or
with no prompt at all.

    segmote predict -i ct.nii.gz -o seg.nii.gz --box 83,93,0,173,162,14 --modality CT
    segmote predict -i ct.nii.gz -o seg.nii.gz --box 83,93,7,173,162,7 --propagate
    segmote predict -i cells.png -o mask.png --box 416,350,446,374 --overlay check.png
    segmote predict -i ct.nii.gz -o seg.nii.gz --box 83,93,0,173,162,14 --text tumour
    segmote predict -i cells.png -o nuclei.png --text nuclei          # prompt-free, one class
    segmote predict -i t1.nii.gz -o aal.nii.gz --auto --classes Hippocampus_L,Hippocampus_R
    segmote predict -i series/ -o seg.dcm --box 83,93,0,173,162,14 --label-name 1=tumour
    segmote predict -i imagesTs/ -o predsTs/ --prompts prompts.json     # a folder of cases
    torchrun --nproc_per_node 4 -m segmote.cli.main predict -i in/ -o out/ --auto -d cuda
    segmote predict -i ct.nii.gz -o seg.nii.gz --box ... --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import time

from segmote.errors import InputError
from segmote.precision import PRECISIONS
from segmote.predict.prompts import (PromptNumbers, parse_class_names, parse_label_names,
                                     parse_numbers)

# library parameter -> the flag that sets it, where they differ (`segmote.cli.main.flag_names`)
FLAGS = {"boxes": "--box", "points": "--point", "labels": "--label",
         "label_names": "--label-name"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment an image or volume from prompts",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True,
                   help="PNG/JPG/TIFF, .npy/.npz, NIfTI, NRRD, MHA/MHD, DICOM file or series "
                        "folder; or a folder of cases (CASE_0000.nii.gz, ..., DICOM series "
                        "subfolders), predicted into -o as CASE.nii.gz, ...")
    p.add_argument("-o", "--output", required=True,
                   help="output file (format from its extension: .dcm writes a DICOM "
                        "Segmentation of a DICOM input, .seg.nrrd a Slicer segmentation) "
                        "or folder")
    p.add_argument("--prompts", metavar="JSON",
                   help='prompts per case for a folder of cases: {"CASE": {"boxes": [[...]], '
                        '"points": [[...]], "text": [...], "labels": [...]}}; cases without '
                        "an entry need --auto")
    p.add_argument("--output-ending", metavar="EXT",
                   help="for a folder of cases: the label maps' ending, e.g. .dcm (DICOM-SEG of "
                        "DICOM cases) or .seg.nrrd (default: the input's family, like nnU-Net)")
    _model_flags(p.add_argument_group("model and speed"))
    _prompt_flags(p.add_argument_group("prompts"))
    _volume_flags(p.add_argument_group("images and volumes"))
    p.add_argument("--overlay", help="write a PNG of the image with the mask contour")
    p.add_argument("--routing", action="store_true",
                   help="print the router's choice per prompt (chosen expert token, experts, "
                        "probabilities); needs an adapter")
    p.add_argument("--attention", metavar="PNG",
                   help="write the expert tokens' attention maps for the first object as a PNG")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar / summary")
    p.set_defaults(func=run, flags=FLAGS)


def _model_flags(p) -> None:
    p.add_argument("--backbone", default="litemedsam", help="base model (default: litemedsam)")
    p.add_argument("--checkpoint", help="weights file for the backbone (SAM / MedSAM ViTs)")
    p.add_argument("--adapter", default="default",
                   help="SegMoTE adapter .safetensors, 'new' (untrained), or 'none' (base model); "
                        "default: the shipped adapter (LiteMedSAM; other backbones: none)")
    p.add_argument("-d", "--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--engine", default="auto",
                   help="what runs the image encoder: auto (default: the fastest installed), "
                        "torch, onnxruntime or openvino (CPU; docs/engine.md)")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: OMP_NUM_THREADS, else every core)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="numeric precision of the model (default fp32; bf16 / fp16 autocast: "
                   "faster on GPUs and on CPUs with AMX / AVX-512 BF16, masks may differ near "
                   "their edges, docs/gpu.md)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="volume slices per encoder call (default 32 on a GPU, 1 on a CPU)")


def _prompt_flags(p) -> None:
    p.add_argument("-b", "--box", action="append", default=[],
                   help="x0,y0,x1,y1 (2-D) or x0,y0,z0,x1,y1,z1 voxel indices (3-D); repeatable")
    p.add_argument("-p", "--point", action="append", default=[],
                   help="x,y[,label] or x,y,z[,label]; label 1 = foreground (default), 0 = background")
    p.add_argument("-l", "--label", action="append", type=int, default=[],
                   help="output label value per object, in order (default 1, 2, ...)")
    p.add_argument("-t", "--text", metavar="CLASS",
                   help="class name, e.g. 'left kidney': with --box/--point one more prompt for "
                        "every object; alone, prompt-free segmentation of that class")
    p.add_argument("--auto", action="store_true",
                   help="prompt-free: segment every class the adapter knows (only those trained "
                        "on the image's modality, when the adapter records it and the modality "
                        "is known), or --classes, into one label map, value i = i-th class; "
                        "every slice of a volume")
    p.add_argument("--classes", help="comma-separated class names for --auto")
    p.add_argument("--label-name", action="append", default=[], metavar="VALUE=NAME",
                   help="name of an output label, e.g. 1=tumour (repeatable); default: the "
                        "class names of --text / --auto. Written as DICOM-SEG segment names, "
                        "in a .seg.nrrd, and in an ITK-SNAP file CASE_labels.txt beside "
                        "NIfTI / NRRD outputs")
    p.add_argument("--threshold", type=float,
                   help="confidence needed to keep an automatic mask (default: the adapter's "
                        "calibrated threshold)")


def _volume_flags(p) -> None:
    p.add_argument("-m", "--modality", help="CT, MR, ... (CT: HU window; MR: percentile clip)")
    p.add_argument("-w", "--window", help="CT window: LEVEL,WIDTH or lung|soft_tissue|bone|brain")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                   help="volume axis to slice along (default 2 = k)")
    p.add_argument("--every-slice", action="store_true",
                   help="3-D box: prompt every slice of its range with the box (default: "
                        "segment the middle slice, then follow the object slice by slice)")
    p.add_argument("--key-slice", type=int, metavar="K",
                   help="3-D box: the slice to start from (default: the middle of its range)")
    p.add_argument("--propagate", action="store_true",
                   help="a prompt on one slice (box x0,y0,k,x1,y1,k or points x,y,k): follow "
                        "the object through the volume until it ends (default: that slice only)")
    p.add_argument("--min-slices", type=int, default=2, metavar="N",
                   help="--auto / --text on a volume: drop 3-D components on fewer slices "
                        "(default 2, chosen on validation volumes: a class found on a single "
                        "slice is dropped)")
    p.add_argument("--series", metavar="UID",
                   help="the SeriesInstanceUID to read from a DICOM folder holding several "
                        "series (without it such a folder is refused with their list)")


def options(args: argparse.Namespace):
    """The typed request of parsed flags: (prompts, PredictOptions)."""
    from segmote.predict.pipeline import PredictOptions

    prompts = PromptNumbers(tuple(parse_numbers(t, "box") for t in args.box),
                            tuple(parse_numbers(t, "point") for t in args.point),
                            tuple(args.label))
    return prompts, PredictOptions(
        backbone=args.backbone, checkpoint=args.checkpoint, adapter=args.adapter,
        modality=args.modality, window=args.window, axis=args.axis, overlay=args.overlay,
        device=args.device, progress=not args.quiet, routing=args.routing,
        attention=args.attention, text=args.text, auto=args.auto,
        classes=parse_class_names(args.classes), threshold=args.threshold,
        every_slice=args.every_slice, propagate=args.propagate, key_slice=args.key_slice,
        min_slices=args.min_slices, label_names=parse_label_names(args.label_name),
        series=args.series, engine=args.engine, threads=args.threads,
        precision=args.precision, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    from segmote.predict.cases import is_case_folder
    from segmote.predict.pipeline import predict_file
    t0 = time.perf_counter()
    prompts, opts = options(args)
    if is_case_folder(args.input):
        from segmote.cli.predict_folder import run_folder
        return run_folder(args, opts)
    for flag, value in (("--prompts", args.prompts), ("--output-ending", args.output_ending)):
        if value is not None:
            raise InputError(f"{flag} goes with a folder of cases; {args.input} is one image")
    result = predict_file(args.input, args.output, prompts, opts)
    if args.auto and args.classes is None and result.auto_modality is None:
        # after the run, so a refused request still prints one line. Measured: without a
        # presence head the default adapter answered 57 % of the classes of other domains with
        # a mask (docs/text_and_ppt.md); the presence head drops most of them (README)
        gate = ("the adapter's presence head drops classes this image cannot hold, "
                if result.auto_presence else "classes of other domains (brain structures on a "
                "microscopy image) may get masks: ")
        print("note: --auto without --classes (and without a modality the adapter was trained "
              f"on) asked every class the adapter knows; {gate}name the ones that can occur "
              "with --classes, or give --modality", file=sys.stderr)
    if args.routing:
        from segmote.routing import format_routing_table
        print(format_routing_table(result.routing))
    if not args.quiet:
        dt = time.perf_counter() - t0
        print(f"wrote {result.output} ({result.summary}) in {dt:.1f} s", file=sys.stderr)
    print(result.output)
    return 0
