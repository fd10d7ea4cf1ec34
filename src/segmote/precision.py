"""Numeric precision by name: the one place "fp32" / "bf16" / "fp16" become autocast contexts.

Callers above the model (the CLI, the pipeline, benchmarks) pass a name; `autocast(name,
device)` returns the context the model code runs in. The model itself is autocast-safe in both
low dtypes on CPU and GPU (routing and its balance loss stay fp32, `segmote.modeling.mote`).

Defaults (`default_precision`): fp32 everywhere for now. On a GPU, bf16 becomes the prediction
default only once it is measured to keep Dice within 0.005 of fp32 on the faithfulness set and
the bundled samples (issue 22); that measurement has not been made yet (no GPU in the session
that wrote this). Training's "auto" (`amp_precision`) is bf16 on a GPU that supports it, fp16
(with a grad scaler) on one that does not, fp32 on a CPU.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from segmote.errors import InputError, ParameterError

if TYPE_CHECKING:
    import torch

# the names import without torch: the CLI offers them as flag choices
PRECISIONS = ("fp32", "bf16", "fp16")
AMP_CHOICES = ("auto", "bf16", "fp16", "none")


def check_precision(name: str) -> str:
    """`name` if it is one of PRECISIONS, else a ParameterError naming the choices."""
    if name not in PRECISIONS:
        raise ParameterError("precision", f"{{precision}} {name!r}: expected one of "
                             f"{', '.join(PRECISIONS)}")
    return name


def default_precision(device: torch.device | str) -> str:
    """Prediction's default: fp32 on every device until bf16 is measured on a GPU (module doc)."""
    return "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context to run model code in: a no-op for fp32, else autocast to bf16 / fp16 on the
    device's type (CPU autocast supports both; on CPUs with AMX / AVX-512 BF16 bf16 is faster,
    on others it is slower than fp32)."""
    import torch

    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def amp_precision(amp: str, device: torch.device | str) -> str:
    """Training's `--amp` choice -> a precision name: "none" -> fp32; "auto" -> bf16 on a GPU
    with bf16 support, fp16 on an older GPU, fp32 on a CPU (CPU autocast is slower than fp32
    for these small decoders on most CPUs); "bf16" / "fp16" on any device."""
    if amp not in AMP_CHOICES:
        raise InputError(f"amp {amp!r}: expected one of {', '.join(AMP_CHOICES)}")
    import torch

    if amp == "none":
        return "fp32"
    if amp != "auto":
        return amp
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def grad_scaler(precision: str, device: torch.device | str) -> Any:
    """A `torch.amp.GradScaler` for fp16 (its gradients underflow without one), else None."""
    import torch

    if check_precision(precision) != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
