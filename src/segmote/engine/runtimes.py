"""CPU inference runtimes for exported ONNX graphs: ONNX Runtime and OpenVINO, behind one
`Session` interface (numpy in, numpy out). Both are optional imports (the `engine` extra).

Precision: "fp32" everywhere. OpenVINO on a CPU that reports BF16 runs bf16 by default; we pin
`INFERENCE_PRECISION_HINT=f32` unless "bf16" is asked for, because bf16 moves the embedding by
up to ~0.03 (docs/engine.md gives what it costs in Dice).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from segmote.errors import InputError, ParameterError

ENGINES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
# fastest first, as measured by benchmarks/bench_engine.py on the 2-core CPU (docs/engine.md)
SPEED_ORDER = ("openvino", "onnxruntime", "torch")
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_INSTALL = "pip install 'segmote[engine]' (onnxruntime==1.31.1 openvino==2026.4.1 onnx==1.23.2)"


class Session(Protocol):
    """A loaded graph: `run` maps input arrays by name to the outputs in graph order."""

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def is_installed(engine: str) -> bool:
    """True for "torch" and for a runtime whose Python package is importable."""
    return engine == "torch" or importlib.util.find_spec(_MODULES[engine]) is not None


def installed_engines() -> list[str]:
    """Engines usable here, fastest first."""
    return [e for e in SPEED_ORDER if is_installed(e)]


def resolve_engine(engine: str | None) -> str:
    """A checked engine name; None or "auto": the fastest installed one (else torch)."""
    if engine in (None, "auto"):
        return installed_engines()[0]
    if engine not in ENGINES:
        raise ParameterError("engine", f"{{engine}} {engine!r}: unknown; choose "
                                       f"{', '.join(ENGINES)} or auto")
    if not is_installed(engine):
        raise ParameterError("engine", f"{{engine}} {engine}: not installed; {_INSTALL}")
    return engine


def check_precision(engine: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ParameterError("precision", f"{{precision}} {precision!r}: unknown; choose "
                                          f"{', '.join(PRECISIONS)}")
    if precision != "fp32" and engine != "openvino":
        raise ParameterError("precision", f"{{precision}} {precision}: offered with engine "
                                          "openvino only")


class OrtSession:
    """ONNX Runtime CPU session, `threads` intra-op threads (0: the runtime's own choice)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # its warnings about unused initialisers are noise to users
        try:
            self._session = ort.InferenceSession(str(path), opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph classes
            raise InputError(f"{path}: onnxruntime cannot load the graph "
                             f"({str(err).splitlines()[0][:160]})") from None

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, inputs)


class OpenVinoSession:
    """OpenVINO CPU compiled model (latency mode), fp32 unless bf16 is asked for. Safe to call
    from several threads (`segmote serve` encodes in a background thread too): an infer request
    must not run twice at once, so each thread gets its own."""

    def __init__(self, path: Path, threads: int, precision: str = "fp32") -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError with multi-line reports
            raise InputError(f"{path}: openvino cannot load the graph "
                             f"({str(err).strip().splitlines()[0][:160]})") from None
        self._local = threading.local()

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer(inputs)
        return [np.array(result[out]) for out in self._compiled.outputs]


def open_session(path: Path, engine: str, threads: int = 0, precision: str = "fp32") -> Session:
    """Load the ONNX graph at `path` on `engine` ("onnxruntime" or "openvino")."""
    check_precision(engine, precision)
    if engine == "onnxruntime":
        return OrtSession(path, threads)
    if engine == "openvino":
        return OpenVinoSession(path, threads, precision)
    raise InputError(f"engine {engine!r} does not run exported graphs")
