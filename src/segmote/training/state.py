"""The resumable training state: one `.safetensors` file, tensors in the body, the rest as JSON in
its header. Nothing is pickled, so loading runs no code from the file (weights-only semantics).

Nested Python state (optimiser, grad scaler, RNG, counters) is split by `split_tensors` into a
JSON tree whose tensors are replaced by {"__tensor__": key} and a flat {key: tensor} dict;
mappings with non-string keys (the optimiser's per-parameter state is keyed by int) are stored as
{"__items__": [[key, value], ...]} so they come back with the same key types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from segmote.atomic import atomic_path
from segmote.errors import CheckpointError

STATE_FORMAT = "segmote-train-state"
STATE_VERSION = "1"


def split_tensors(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able copy of `obj` with every tensor moved into `tensors` under a path-like key."""
    if isinstance(obj, Tensor):
        key = prefix or "tensor"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, split_tensors(v, f"{prefix}.{k}", tensors)]
                              for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in the training state")


def join_tensors(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (nested dicts / lists of tensors and JSON values) atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    tree = split_tensors(state, "", tensors)
    header = {"format": STATE_FORMAT, "format_version": STATE_VERSION,
              "state": json.dumps(tree)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by `save_state`; CheckpointError when missing or not one."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several error types for bad files
        raise CheckpointError(f"{path}: not a valid training state ({err})") from None
    if header.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a segmote training state")
    return join_tensors(json.loads(header["state"]), tensors)


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """Torch RNG states (CPU, and the current CUDA device when training on one)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
