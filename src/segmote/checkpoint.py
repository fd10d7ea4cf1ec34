"""Safe loading of weight files: tensors only, strict key checks, one-line errors.

Pickled checkpoints are opened with `torch.load(weights_only=True)`, which refuses arbitrary
objects; `.safetensors` files are read with safetensors. A file that does not fit the model is
reported with the names of the missing / unexpected / mis-shaped keys.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from segmote.errors import CheckpointError

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a plain tensor state dict from `.safetensors`, `.pth`/`.pt`/`.bin`.

    Unwraps one level of {"model": ...} / {"state_dict": ...} and strips DDP `module.` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except Exception as err:  # safetensors raises several error types for bad headers
            raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe content"
            raise CheckpointError(
                f"{path}: refused to load, not a plain tensor state dict ({first[:160]})") from None
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read checkpoint ({str(err)[:160]})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_finite_weights(state_dict: dict[str, Tensor], source: str | Path) -> None:
    """CheckpointError naming the first tensor holding NaN or Inf (such weights turn every
    mask into foreground or nothing; refusing them at load is the only safe answer)."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            n_bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: weights hold NaN or Inf ({n_bad} of "
                                  f"{value.numel()} values of {key}); the file is damaged")


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], source: str | Path) -> None:
    """Load `state_dict` into `module`, failing with one line naming what does not fit or holds
    NaN / Inf."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        k = shapes[0]
        problems.append(f"shape mismatch: {k} is {tuple(state_dict[k].shape)} in the file, "
                        f"{tuple(own[k].shape)} in the model" +
                        (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if problems:
        raise CheckpointError(f"{source}: does not fit the model; " + "; ".join(problems))
    check_finite_weights(state_dict, source)
    module.load_state_dict(state_dict, strict=True)
