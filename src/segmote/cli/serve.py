"""`segmote serve`: the interactive web app and its HTTP API (docs/api.md).

    segmote serve                              # http://127.0.0.1:8000, uploads only
    segmote serve --root ~/scans --port 8080   # the page can also open files under ~/scans
    segmote serve --host 0.0.0.0               # reachable from other machines: a token is made
"""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
from pathlib import Path

from segmote.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web app + HTTP API for interactive segmentation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other "
                        "host needs a token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="token every request must carry (default: generated when "
                                   "--host is not loopback)")
    p.add_argument("--root", type=Path, help="folder whose files the page may open")
    p.add_argument("--backbone", default="litemedsam", help="base model (default: litemedsam)")
    p.add_argument("--checkpoint", type=Path, help="weights file for SAM / MedSAM backbones")
    p.add_argument("--adapter", default="default",
                   help="SegMoTE adapter .safetensors, 'new' or 'none' (default: the shipped one)")
    p.add_argument("-d", "--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--engine", default="auto",
                   choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="what runs the image encoder (default auto: the fastest installed; "
                        "torch on a GPU; docs/engine.md)")
    p.add_argument("--max-upload-mb", type=float, default=512.0,
                   help="largest upload accepted (default 512)")
    p.add_argument("--max-image-mb", type=float, default=2048.0,
                   help="largest decoded image accepted (default 2048)")
    p.add_argument("--cache-mb", type=float, default=512.0,
                   help="encoded slices kept per image, least recently used dropped (default 512)")
    p.add_argument("--undo-mb", type=float, default=256.0,
                   help="undo history kept per image (default 256)")
    p.add_argument("--max-sessions", type=int, default=8,
                   help="images open at once; the least recently used closes (default 8)")
    p.add_argument("--session-minutes", type=float, default=60.0,
                   help="an image left idle this long is closed (default 60)")
    p.add_argument("--prefetch", type=int, default=2,
                   help="neighbouring slices encoded in the background on each side (default 2)")
    p.set_defaults(func=run, flags={"session_ttl_s": "--session-minutes"})


def _check_port(host: str, port: int) -> None:
    """Fail with one line before the model loads when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise InputError(f"--host {host} --port {port}: cannot listen there "
                             f"({err.strerror})") from None


def run(args: argparse.Namespace) -> int:
    from segmote.serve.config import ServeConfig, is_loopback

    token = args.token or (None if is_loopback(args.host) else secrets.token_urlsafe(24))
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: must be between 1 and 65535")
    _check_port(args.host, args.port)
    config = ServeConfig(
        host=args.host, port=args.port, token=token, root=args.root,
        max_upload_mb=args.max_upload_mb, max_image_mb=args.max_image_mb,
        cache_mb=args.cache_mb, undo_mb=args.undo_mb,
        max_sessions=args.max_sessions, session_ttl_s=60.0 * args.session_minutes,
        prefetch=args.prefetch, backbone=args.backbone, checkpoint=args.checkpoint,
        adapter=None if args.adapter in ("none", "None") else args.adapter,
        device=args.device, engine=args.engine)
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise InputError(f"segmote serve needs {err.name}: pip install 'segmote[serve]'") from None
    from segmote.serve import create_app

    app = create_app(config)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"segmote serve: open {url}", flush=True)
    if args.root is not None:
        print(f"segmote serve: files under {args.root.resolve()}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    from segmote.cli.main import main
    sys.exit(main(["serve", *sys.argv[1:]]))
