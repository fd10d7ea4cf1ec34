"""Fast CPU inference: the frozen image encoder exported to ONNX and run by ONNX Runtime or
OpenVINO (`load_model(engine=...)`), and `segmote export` of every graph for deployment.

The runtimes are optional (the `engine` extra); engine "torch" is plain PyTorch and needs neither.
"""

from __future__ import annotations

import torch
from torch import nn

from segmote.engine.runtimes import (ENGINES, PRECISIONS, check_precision, installed_engines,
                                     resolve_engine)
from segmote.errors import InputError, ParameterError

__all__ = ["ENGINES", "PRECISIONS", "installed_engines", "resolve_engine", "use_engine"]


def use_engine(model: nn.Module, engine: str, backbone: str, backbone_sha256: str,
               threads: int | None = None, precision: str = "fp32",
               parallel_slices: bool = False) -> nn.Module:
    """Replace the image encoder of `model` (a CPU `Sam` or `SegMoTE`) by an `EngineEncoder`
    running the cached graph of this backbone on `engine`; returns `model`.

    threads: intra-op threads; None: torch's count (OMP_NUM_THREADS / torch.set_num_threads).
    A cached graph the runtime cannot load is rebuilt once.
    """
    from segmote.engine.encoder import EngineEncoder
    from segmote.engine.store import encoder_graph

    if engine == "auto" and model.device.type != "cpu":
        engine = "torch"  # the runtimes here are CPU engines
    engine = resolve_engine(engine)
    check_precision(engine, precision)
    if engine == "torch":
        return model
    if model.device.type != "cpu":
        raise ParameterError("engine", f"{{engine}} {engine} runs on the CPU; use torch on "
                                       f"{model.device}")
    threads = torch.get_num_threads() if threads is None else threads
    base = getattr(model, "base", model)
    graph = encoder_graph(model, backbone, backbone_sha256)
    try:
        encoder = EngineEncoder(graph, engine, base.image_encoder, threads, precision,
                                parallel_slices)
    except InputError:  # a damaged file whose sha256 still matched cannot happen; a graph
        # written by an older runtime that this one refuses can: export it again
        graph = encoder_graph(model, backbone, backbone_sha256, rebuild=True)
        encoder = EngineEncoder(graph, engine, base.image_encoder, threads, precision,
                                parallel_slices)
    base.image_encoder = encoder
    return model
