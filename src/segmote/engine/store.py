"""The on-disk cache of exported encoder graphs: `$SEGMOTE_HOME/engine/<backbone>-<sha>/`.

An entry is `encoder.onnx` plus `manifest.json`, the manifest written last (an entry without one
is unfinished). The key is the backbone's weights sha256 and the export format: the encoder is
frozen, so every adapter of a backbone shares its graph (decoder graphs, which depend on the
adapter, are written by `segmote export`, keyed in their manifest by backbone and adapter
sha256). An entry is rebuilt, with a progress message, when it is missing, stale (another
format or weights hash) or corrupt (its file's sha256 differs from the manifest's, or the runtime
cannot load it).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from segmote import __version__
from segmote.checkpoint import sha256_file
from segmote.engine.graphs import (ENCODER_INPUTS, ENCODER_OUTPUTS, EXPORT_FORMAT, OPSET,
                                   EncoderGraph, export_onnx)
from segmote.engine.manifest import GraphInfo, Manifest, preprocessing
from segmote.errors import InputError
from segmote.samples._fetch import segmote_home

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def entry_dir(backbone: str, backbone_sha256: str) -> Path:
    return segmote_home() / "engine" / f"{backbone}-{backbone_sha256[:16]}"


def is_current(folder: Path, backbone_sha256: str) -> bool:
    """True when `folder` holds a finished entry of this format for these weights whose graph
    file still has the sha256 its manifest recorded."""
    try:
        manifest = Manifest.read(folder / "manifest.json")
    except InputError:
        return False
    info = manifest.graphs.get("encoder")
    if (manifest.format != EXPORT_FORMAT or manifest.backbone_sha256 != backbone_sha256
            or info is None or not (folder / info.file).is_file()):
        return False
    return sha256_file(folder / info.file) == info.sha256


def encoder_manifest(model: nn.Module, backbone: str, backbone_sha256: str,
                     graph: GraphInfo) -> Manifest:
    """The manifest of the encoder graph of `model` (a `Sam` or `SegMoTE`)."""
    s = model.img_size
    base = getattr(model, "base", model)
    return Manifest(EXPORT_FORMAT, OPSET, backbone, backbone_sha256, None, s,
                    preprocessing(s, base.pixel_mean.flatten().tolist(),
                                  base.pixel_std.flatten().tolist()),
                    {"encoder": graph}, __version__, torch.__version__)


def export_encoder(model: nn.Module, path: Path) -> GraphInfo:
    """Write the image encoder of `model` to `path` (ONNX, dynamic batch); the returned info
    holds the max |difference| of its outputs from PyTorch's on one random input, checked with
    onnxruntime when installed (else None: not checked)."""
    encoder = model.image_encoder
    s = model.img_size
    # a batch of 2: torch.export specialises a dimension of size 1
    x = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    export_onnx(EncoderGraph(encoder), {ENCODER_INPUTS[0]: x}, str(path), ENCODER_OUTPUTS)
    with torch.no_grad():
        want = encoder(x)
    diff = None
    from segmote.engine.runtimes import is_installed, open_session
    if is_installed("onnxruntime"):
        got = open_session(path, "onnxruntime").run({"image": x.numpy()})
        diff = max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want))
    outputs = {n: ["B", *t.shape[1:]] for n, t in zip(ENCODER_OUTPUTS, want)}
    return GraphInfo(path.name, sha256_file(path), {"image": ["B", 3, s, s]}, outputs, diff)


def encoder_graph(model: nn.Module, backbone: str, backbone_sha256: str,
                  progress: Progress = _stderr, rebuild: bool = False) -> Path:
    """Path of the cached encoder graph of `model`, exported first if missing / stale / corrupt
    (or `rebuild`). Entries are built in a temporary folder and renamed into place."""
    folder = entry_dir(backbone, backbone_sha256)
    if not rebuild and is_current(folder, backbone_sha256):
        return folder / "encoder.onnx"
    state = "rebuilding a stale or damaged" if folder.exists() else "building the"
    progress(f"segmote: {state} {backbone} encoder graph (once, ~30 s) in {folder}")
    t0 = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent,
                                     ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        graph = export_encoder(model, tmp / "encoder.onnx")
        manifest = encoder_manifest(model, backbone, backbone_sha256, graph)
        (tmp / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
        done = tmp.with_name(tmp.name + ".done")
        tmp.rename(done)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            done.rename(folder)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(done, ignore_errors=True)
    diff = "not checked" if graph.max_abs_diff is None else f"{graph.max_abs_diff:.1e}"
    progress(f"segmote: encoder graph ready ({time.perf_counter() - t0:.0f} s, max |difference| "
             f"from PyTorch {diff})")
    return folder / "encoder.onnx"
