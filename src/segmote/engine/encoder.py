"""`EngineEncoder`: an image encoder module that runs an exported graph on a CPU runtime and
returns exactly what the PyTorch encoder returns, so `Sam.encode`, the predictor, the decoder and
the training embedding cache need no change (`load_model(engine=...)` swaps it in).

Several slices in one call (B > 1) either go through the graph as one batch with every thread on
each operator, or are split across one session per thread that run side by side
(`parallel_slices`); which is faster here is measured by benchmarks/bench_engine.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from segmote.engine.graphs import ENCODER_INPUTS
from segmote.engine.runtimes import Session, open_session
from segmote.modeling.encoder_output import EncoderOutput


class EngineEncoder(nn.Module):
    """(B, 3, S, S) normalised images -> EncoderOutput, computed by `engine` from `graph`.

    Args:
        graph: the encoder's ONNX file (`segmote.engine.store.encoder_graph`).
        engine: "onnxruntime" or "openvino".
        like: the PyTorch encoder it replaces (its `img_size`, `early_dim` are copied).
        threads: intra-op threads (0: the runtime's default).
        precision: "fp32", or "bf16" (OpenVINO).
        parallel_slices: run a batch as `threads` single-thread sessions side by side.
    """

    def __init__(self, graph: Path, engine: str, like: nn.Module, threads: int = 0,
                 precision: str = "fp32", parallel_slices: bool = False) -> None:
        super().__init__()
        self.engine, self.precision, self.graph = engine, precision, graph
        self.img_size, self.early_dim = like.img_size, like.early_dim
        self.threads = threads
        self._session = open_session(graph, engine, threads, precision)
        self._workers: list[Session] = []
        if parallel_slices and threads > 1:
            self._workers = [open_session(graph, engine, 1, precision) for _ in range(threads)]

    def _run(self, session: Session, x: np.ndarray) -> list[np.ndarray]:
        return session.run({ENCODER_INPUTS[0]: x})

    def forward(self, x: Tensor) -> EncoderOutput:
        """x: (B, 3, S, S) -> image_embedding (B, 256, h, w), early_features (B, C, h, w)."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self._workers and arr.shape[0] > 1:
            chunks = np.array_split(arr, min(len(self._workers), arr.shape[0]))
            with ThreadPoolExecutor(len(chunks)) as pool:  # the runtimes release the GIL
                parts = list(pool.map(self._run, self._workers, chunks))
            outs = [np.concatenate(p) for p in zip(*parts)]
        else:
            outs = self._run(self._session, arr)
        emb, early = (torch.from_numpy(np.ascontiguousarray(o)).to(x.device) for o in outs)
        return EncoderOutput(emb, early)

    def extra_repr(self) -> str:
        return f"engine={self.engine}, precision={self.precision}, graph={self.graph}"
