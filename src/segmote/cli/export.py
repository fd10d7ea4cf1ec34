"""`segmote export`: a thin argparse wrapper over :func:`segmote.engine.export.export_graphs`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    parser = subparsers.add_parser(
        "export", help="export the model's graphs to ONNX (deployment: onnxruntime-web, C++)",
        description=("Write the image encoder and the prompt-and-decoder graphs (base model, or "
                     "SegMoTE with its adapter; text and prompt-free variants when the adapter "
                     "has them) as ONNX with a dynamic batch, and manifest.json; each graph is "
                     "checked against PyTorch on the bundled samples. Deployment: "
                     "docs/engine.md."))
    parser.add_argument("--onnx", required=True, type=Path, metavar="OUT_DIR",
                        help="folder to write the graphs and manifest.json into")
    parser.add_argument("-b", "--backbone", default="litemedsam", metavar="NAME",
                        help="base model (default: litemedsam)")
    parser.add_argument("-c", "--checkpoint", type=Path, metavar="FILE",
                        help="weights of the backbone (required for the SAM / MedSAM ViTs)")
    parser.add_argument("-a", "--adapter", default="default", metavar="PATH|default|none",
                        help="adapter to export with the decoder (default: the shipped one; "
                             "none: the base model)")
    parser.add_argument("--check-engine", default="onnxruntime",
                        choices=("onnxruntime", "openvino"),
                        help="runtime that runs the check against PyTorch (default onnxruntime)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, print one line per graph with its check; return the exit status."""
    from segmote.build import DEFAULT_ADAPTER, load_model, weights_sha256
    from segmote.checkpoint import sha256_file
    from segmote.engine.export import export_graphs
    from segmote.engine.runtimes import resolve_engine

    engine = resolve_engine(args.check_engine)
    adapter = None if str(args.adapter).lower() == "none" else args.adapter
    model = load_model(args.backbone, args.checkpoint, adapter=adapter)
    adapter_file = DEFAULT_ADAPTER if adapter == "default" else adapter
    adapter_sha = None if getattr(model, "adapter", None) is None or adapter_file == "new" \
        else sha256_file(adapter_file)
    manifest = export_graphs(model, args.onnx, args.backbone,
                             weights_sha256(args.backbone, args.checkpoint), adapter_sha, engine)
    print(f"wrote {len(manifest.graphs)} graphs and manifest.json to {args.onnx} "
          f"(checked with {engine} against PyTorch):")
    for name, g in manifest.graphs.items():
        pixels = "" if g.mask_pixels_differing is None else \
            f", mask pixels differing {g.mask_pixels_differing}"
        print(f"  {g.file:22s} max |difference| {g.max_abs_diff:.1e}{pixels} "
              f"({', '.join(g.checked_on)})")
    return 0
