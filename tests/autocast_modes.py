"""The mixed-precision modes the autocast tests run every check under (issue 22).

- "cpu-bf16", "cpu-fp16": real CPU autocast (CPU's own casting rules).
- "emulated-cuda-bf16", "emulated-cuda-fp16": CUDA autocast's casting rules on the CPU
  (`cuda_autocast.cuda_autocast_on_cpu`): the dtypes a GPU run sees, so CI catches what only a
  GPU showed.
- "cuda-bf16", "cuda-fp16": real CUDA autocast; marked `cuda`: where no GPU is present they are
  deselected with a note (conftest.py), and `pytest -m cuda` runs them (failing without a GPU).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from cuda_autocast import cuda_autocast_on_cpu, cuda_rules_on_cpu

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

MODES = [pytest.param(m, id=m) for m in ("cpu-bf16", "cpu-fp16", "emulated-cuda-bf16",
                                          "emulated-cuda-fp16")] + \
    [pytest.param(m, id=m, marks=pytest.mark.cuda) for m in ("cuda-bf16", "cuda-fp16")]


def mode_dtype(mode: str) -> torch.dtype:
    return _DTYPES[mode.rsplit("-", 1)[1]]


def mode_device(mode: str) -> torch.device:
    """The device a mode runs on; a cuda mode without a GPU fails here, loudly."""
    if mode.startswith("cuda-"):
        assert torch.cuda.is_available(), f"{mode}: this test needs a CUDA GPU"
        return torch.device("cuda")
    return torch.device("cpu")


def mode_autocast(mode: str) -> Callable[[], Any]:
    """A factory of the mode's autocast context (what `train_step` takes)."""
    dtype = mode_dtype(mode)
    if mode.startswith("emulated-cuda-"):
        return functools.partial(cuda_autocast_on_cpu, dtype)
    if mode.startswith(("cpu-", "cuda-")):
        return functools.partial(torch.autocast, mode.split("-")[0], dtype=dtype)
    return contextlib.nullcontext


def mode_step(mode: str) -> tuple[Any, Callable[[], Any]]:
    """(context, autocast factory) for a training step under the mode: an emulated mode keeps
    CUDA's rules installed for the whole step, backward included (activation checkpoints
    recompute the forward there), and the factory only switches autocast on."""
    if mode.startswith("emulated-cuda-"):
        dtype = mode_dtype(mode)
        return cuda_rules_on_cpu(dtype), functools.partial(torch.autocast, "cpu", dtype=dtype)
    return contextlib.nullcontext(), mode_autocast(mode)
