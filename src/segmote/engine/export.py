"""`segmote export`: every graph of a model as ONNX for deployment (onnxruntime-web, C++), with a
manifest, and a check that the graphs reproduce PyTorch on the bundled real samples.

Graphs: `encoder` (always); `decoder` (prompt encoder + mask decoder: the base model's, or
SegMoTE's with its adapter and expert head); with a text adapter `decoder_text` (a box / points
plus a class-name embedding); with a PPT adapter that takes text `decoder_auto` (prompt-free:
the class-name embedding alone). All have a dynamic batch (`segmote.engine.graphs`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from segmote.checkpoint import sha256_file
from segmote.engine.graphs import (BaseDecoderGraph, EncoderGraph, SegMoTEDecoderGraph,
                                   export_onnx)
from segmote.engine.manifest import GraphInfo, Manifest
from segmote.engine.runtimes import Session, open_session
from segmote.engine.store import encoder_graph, encoder_manifest
from segmote.errors import InputError

Progress = Callable[[str], None]
CHECK_TEXT = {"lung2_ct_crop": "tumour", "nuclei": "nuclei"}  # class names of the check


class CheckInput(NamedTuple):
    """One bundled sample prepared for the check: encoder input and outputs, a box prompt."""

    name: str
    image: Tensor  # (1, 3, S, S) in [0, 1]
    embedding: Tensor  # (1, D, h, w)
    early: Tensor  # (1, C, h, w)
    box: Tensor  # (1, 4) padded-input pixels


def decoder_graphs(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module to export for the decoder side of `model` (a `Sam` or `SegMoTE`)."""
    adapter = getattr(model, "adapter", None)
    if adapter is None:
        return {"decoder": BaseDecoderGraph(model)}
    graphs = {"decoder": SegMoTEDecoderGraph(model)}
    if adapter.text is not None:
        graphs["decoder_text"] = SegMoTEDecoderGraph(model, text=True)
        if adapter.ppt is not None:
            graphs["decoder_auto"] = SegMoTEDecoderGraph(model, auto=True)
    return graphs


def graph_inputs(graph: nn.Module, sample: CheckInput, text: Tensor | None,
                 mask_size: int) -> dict[str, Tensor]:
    """The named inputs of `graph` for a box prompt on `sample` (batch 1, no mask prompt)."""
    corners = sample.box.view(1, 2, 2)
    values = {"image_embedding": sample.embedding, "early_features": sample.early,
              "point_coords": corners, "point_labels": torch.tensor([[2.0, 3.0]]),
              "mask_input": torch.zeros(1, 1, mask_size, mask_size),
              "has_mask_input": torch.zeros(1), "text_embedding": text}
    return {name: values[name] for name in graph.inputs}


def check_samples(model: nn.Module) -> list[CheckInput]:
    """The bundled CT tumour slice and nuclei image, preprocessed as the predictor does."""
    from segmote.io import read_image
    from segmote.samples import bundled_sample_path, bundled_samples
    from segmote.transforms import preprocess

    out = []
    for name, entry in bundled_samples().items():
        data = read_image(bundled_sample_path(name)).array
        box = np.asarray(entry["box"], dtype=np.float32)
        if entry["dims"] == 3:  # display slice = vol[:, :, k].T (samples.json "axes")
            k = (int(box[2]) + int(box[5])) // 2
            data, box = data[:, :, k].T, box[[0, 1, 3, 4]]
        x, geometry = preprocess(data, model.img_size, entry["modality"]
                                 if entry["modality"] in ("CT", "MR") else None)
        x = x[None]
        with torch.no_grad():
            enc = model.encode(x)
        box_in = torch.from_numpy(geometry.boxes_to_input(box[None])).float()
        out.append(CheckInput(name, x, enc.image_embedding, enc.early_features, box_in))
    return out


def _texts(model: nn.Module, names: list[str]) -> dict[str, Tensor] | None:
    if getattr(getattr(model, "adapter", None), "text", None) is None:
        return None
    from segmote.predict.segmenter import Segmenter
    emb = Segmenter(model).embed_text([CHECK_TEXT.get(n, n) for n in names])
    return dict(zip(names, emb[:, None]))


def compare(session: Session, graph: nn.Module, inputs: dict[str, Tensor],
            output_names: tuple[str, ...]) -> tuple[float, int]:
    """Max |exported graph - PyTorch module| over the outputs and the number of mask pixels
    (logit > 0 at the low-res grid) that differ, for one set of inputs."""
    with torch.no_grad():
        want = graph(**inputs)
    got = session.run({k: v.numpy() for k, v in inputs.items()})
    diff = max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want))
    flips = sum(int(((torch.from_numpy(g) > 0) != (w > 0)).sum())
                for g, w, name in zip(got, want, output_names) if "masks" in name)
    return diff, flips


def _card(model: nn.Module) -> dict:
    """The adapter's card (vocabulary, text template, calibration) as plain JSON values."""
    card = getattr(model, "card", None)
    if card is None:
        return {}
    entries = {k: v for k, v in dataclasses.asdict(card).items() if k not in ("extra", "raw")}
    return json.loads(json.dumps(entries, default=str))


def _shapes(inputs: dict[str, Tensor] | tuple[Tensor, ...], names) -> dict[str, list]:
    items = inputs.items() if isinstance(inputs, dict) else zip(names, inputs)
    return {k: ["B", *(["N"] if k.startswith("point_") else list(v.shape[1:2])),
                *list(v.shape[2:])] for k, v in items}


def _export_decoder(name: str, graph: nn.Module, samples: list[CheckInput],
                    texts: dict[str, Tensor] | None, folder: Path, engine: str,
                    mask_size: int) -> GraphInfo:
    path = folder / f"{name}.onnx"
    text = lambda s: None if texts is None else texts[s.name]  # noqa: E731
    first = graph_inputs(graph, samples[0], text(samples[0]), mask_size)
    # traced on a batch of 2: torch.export specialises a dimension of size 1
    export_onnx(graph, {k: torch.cat([v, v]) for k, v in first.items()}, str(path),
                graph.outputs)
    diffs, flips = [], 0
    session = open_session(path, engine)
    for sample in samples:
        d, f = compare(session, graph, graph_inputs(graph, sample, text(sample), mask_size),
                       graph.outputs)
        diffs.append(d)
        flips += f
    with torch.no_grad():
        outs = graph(**first)
    return GraphInfo(path.name, sha256_file(path), _shapes(first, None),
                     _shapes(outs, graph.outputs), max(diffs), flips,
                     [f"{s.name} (box)" for s in samples])


def export_graphs(model: nn.Module, out_dir: Path, backbone: str, backbone_sha256: str,
                  adapter_sha256: str | None, engine: str = "onnxruntime",
                  progress: Progress = print) -> Manifest:
    """Write every graph of `model` (a PyTorch `Sam` or `SegMoTE`) and `manifest.json` into
    `out_dir`, each graph checked on the bundled samples with `engine` against PyTorch.

    Files are written in a temporary folder beside `out_dir` and moved in when all are done.
    """
    if type(model.image_encoder).__name__ == "EngineEncoder":
        raise InputError("export needs the PyTorch model (load_model with engine='torch')")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    samples = check_samples(model)
    texts = _texts(model, [s.name for s in samples])
    graphs: dict[str, GraphInfo] = {}
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        cached = encoder_graph(model, backbone, backbone_sha256, progress)  # shared, frozen
        shutil.copyfile(cached, tmp / "encoder.onnx")
        enc = Manifest.read(cached.parent / "manifest.json").graphs["encoder"]
        base = getattr(model, "base", model)
        session = open_session(tmp / "encoder.onnx", engine)
        diffs = [compare(session, EncoderGraph(model.image_encoder),
                         {"image": (s.image - base.pixel_mean) / base.pixel_std}, ())[0]
                 for s in samples]
        graphs["encoder"] = dataclasses.replace(enc, max_abs_diff=max(diffs),
                                                checked_on=[s.name for s in samples])
        for name, graph in decoder_graphs(model).items():
            progress(f"exporting {name}")
            graphs[name] = _export_decoder(name, graph, samples, texts, tmp, engine,
                                           model.mask_input_size)
        manifest = dataclasses.replace(
            encoder_manifest(model, backbone, backbone_sha256, graphs["encoder"]),
            graphs=graphs, adapter_sha256=adapter_sha256,
            adapter=_card(model))
        (tmp / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
        out_dir.mkdir(exist_ok=True)
        for item in tmp.iterdir():
            shutil.move(str(item), str(out_dir / item.name))
    return manifest
