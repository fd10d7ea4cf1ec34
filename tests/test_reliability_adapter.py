"""Adapters that would give a wrong mask are refused at load (issue 21, case 5): weights with
NaN / Inf, and metadata of the wrong type (a vocabulary stored as one string, which was read
letter by letter). Real backbone, the shipped default adapter, edited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import segmote
from segmote.adapter import read_adapter_metadata
from segmote.errors import CheckpointError

DEFAULT = Path(segmote.__file__).parent / "assets" / "adapters" / "default.safetensors"


def _edited(path: Path, weights=None, **meta) -> Path:
    state = load_file(DEFAULT)
    for key, value in (weights or {}).items():
        state[key] = value
    header = {k: v if isinstance(v, str) else json.dumps(v)
              for k, v in {**read_adapter_metadata(DEFAULT), **meta}.items()}
    save_file(state, str(path), metadata=header)
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_adapter_weights_with_non_finite_values_are_refused(tmp_path, bad):
    state = load_file(DEFAULT)
    key = sorted(k for k, v in state.items() if v.is_floating_point())[-1]
    poisoned = state[key].clone()
    poisoned.view(-1)[3] = bad
    path = _edited(tmp_path / "bad.safetensors", {key: poisoned})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=f"bad.safetensors: weights hold NaN or Inf "
                                              f"\\(1 of {poisoned.numel()} values of {key}\\)"):
        segmote.load_model(adapter=path)
    assert path.read_bytes() == before
    assert torch.isfinite(load_file(DEFAULT)[key]).all()  # the shipped adapter is fine


def test_vocabulary_stored_as_a_string_is_refused(tmp_path):
    path = _edited(tmp_path / "str_vocab.safetensors", vocabulary="nuclei")
    with pytest.raises(CheckpointError, match="str_vocab.safetensors.*vocabulary"):
        segmote.load_model(adapter=path)
