"""SegMoTE adapter checkpoints: only the adapter weights, in `.safetensors`, with metadata.

An adapter file holds `SegMoTE.adapter.state_dict()` (a few MB) and, in the safetensors header:

    format            "segmote-adapter"          format_version  "1"
    backbone          e.g. "litemedsam"          backbone_sha256 sha256 of the base weights file
    mote_config       MoTEConfig as JSON         embed_dim       decoder width D
    segmote_version   version that wrote it
    + caller metadata (e.g. "vocabulary": class / text names, "training_data": a summary),
      each value stored as JSON; `segmote.adapter.card.AdapterCard` reads and checks them all

Loading refuses an adapter trained on other base weights (name or sha256 differ), loads strictly
(missing / unexpected / mis-shaped keys are named in one line), and never unpickles code: a
`.pt`/`.pth` adapter is read only through `torch.load(weights_only=True)` (a plain tensor dict);
such a file has no metadata, so its backbone cannot be verified and a warning says so.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from segmote import __version__
from segmote.adapter.card import (FORMAT, FORMAT_VERSION, RESERVED_KEYS, AdapterCard,
                                  decode_header)
from segmote.atomic import atomic_path
from segmote.checkpoint import load_strict, read_state_dict
from segmote.errors import CheckpointError, CheckpointParameterError, InputError, SegmoteError
from segmote.modeling.sam import Sam
from segmote.modeling.segmote import MoTEConfig, SegMoTE


def _encode_entries(entries: dict[str, Any]) -> dict[str, str]:
    """Caller header entries as safetensors metadata (JSON strings); InputError for a reserved
    key (the format's own: `save_adapter` writes those) or a value JSON cannot hold."""
    clash = sorted(set(entries) & set(RESERVED_KEYS))
    if clash:
        raise InputError(f"metadata keys {', '.join(clash)} are reserved for the adapter format")
    try:
        return {str(key): json.dumps(value, sort_keys=True) for key, value in entries.items()}
    except TypeError as err:
        raise InputError(f"adapter metadata must be JSON-serialisable ({err})") from None


def adapter_state_dict(model: SegMoTE) -> dict[str, Tensor]:
    """The adapter weights only (no backbone tensor), detached and contiguous."""
    return {k: v.detach().contiguous() for k, v in model.adapter.state_dict().items()}


def save_adapter(model: SegMoTE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the adapter of `model` to a `.safetensors` file (atomically: temp file + rename).

    metadata: extra header entries, e.g. {"vocabulary": [...], "training_data": {...}}; each
    value must be JSON-serialisable. Returns the path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: adapters are saved as .safetensors")
    if not model.backbone or not model.backbone_sha256:
        raise CheckpointError("cannot save an adapter whose backbone is unknown; build the model "
                              "with segmote.build.load_model(adapter='new') or attach_adapter("
                              "..., backbone=..., backbone_sha256=...)")
    header = _encode_entries(metadata or {})
    header.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "segmote_version": __version__,
        "backbone": model.backbone, "backbone_sha256": model.backbone_sha256,
        "mote_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "embed_dim": str(model.embed_dim),
    })
    AdapterCard.from_header(header, path)  # a wrong type is refused before anything is written
    with atomic_path(path) as tmp:
        save_file(adapter_state_dict(model), str(tmp), metadata=header)
    return path


def resave_adapter(model: SegMoTE, source: str | Path, path: str | Path,
                   entries: dict[str, Any]) -> Path:
    """Write `model`'s adapter to `path` with the header of the adapter file `source`, its
    `entries` set (e.g. a new calibration): how post-training steps (recalibration, the presence
    head) rewrite a trained adapter without losing its vocabulary or training metadata.
    "earlier_versions" is not kept: those files shared the source's tensors and settings, which
    a resave exists to change."""
    meta = read_adapter_metadata(source)
    keep = {k: v for k, v in meta.items()  # save_adapter writes the reserved ones
            if k not in RESERVED_KEYS and k != "earlier_versions"}
    return save_adapter(model, path, {**keep, **entries})


def rewrite_adapter_header(source: str | Path, path: str | Path,
                           entries: dict[str, Any]) -> Path:
    """Copy the adapter file `source` to `path` (atomically; the same path rewrites it) with
    header `entries` set and every tensor unchanged, without building a model: how a fact
    learned after training (e.g. "training_modalities" of an adapter written before the trainer
    recorded it) is added. Reserved entries (format, backbone, mote_config, ...) are refused."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, path = Path(source), Path(path)
    header = {**_read_header(source), **_encode_entries(entries)}
    AdapterCard.from_header(header, path)  # a wrong type is refused before anything is written
    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def _read_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # safetensors raises several error types for bad headers
        raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from None


def read_adapter_metadata(path: str | Path) -> dict[str, Any]:
    """Header metadata of a `.safetensors` adapter, JSON values decoded (checked by
    `AdapterCard`; for rewriting a header, `resave_adapter`; to read it, `read_adapter_card`).

    Raises CheckpointError when the file is missing, unreadable or not a segmote adapter.
    """
    path = Path(path)
    meta = decode_header(_read_header(path), path)
    AdapterCard.from_metadata(meta, path)  # the same checks as every reader
    return meta


def read_adapter_card(path: str | Path) -> AdapterCard:
    """The typed header of a `.safetensors` adapter; CheckpointError (one line naming the file)
    when it is missing, unreadable, not a segmote adapter, or holds a value of the wrong type."""
    path = Path(path)
    return AdapterCard.from_header(_read_header(path), path)


def check_backbone(path: Path, card: AdapterCard, backbone: str | None,
                   sha256: str | None) -> None:
    """CheckpointError unless the adapter at `path` (header `card`) was trained on this backbone
    name and weights file (sha256); None for either means the caller cannot tell, also an error."""
    if backbone is None or sha256 is None:
        raise CheckpointError(f"{path}: cannot check which backbone the adapter belongs to; load "
                              f"it with segmote.build.load_model(backbone=..., adapter=...)")
    if card.backbone != backbone:
        raise CheckpointError(f"{path}: adapter was trained for backbone "
                              f"{card.backbone!r}, not {backbone!r}")
    want = str(card.backbone_sha256 or "")
    if want != sha256:
        raise CheckpointParameterError(
            "checkpoint", f"{path}: adapter was trained on {backbone} weights with sha256 "
            f"{want[:12]}..., but the loaded weights are {sha256[:12]}...; use the matching "
            "{checkpoint}")


def _config_from(path: Path, card: AdapterCard, config: MoTEConfig | None) -> MoTEConfig:
    try:
        if card.mote_config is None:
            raise KeyError("mote_config")
        stored = MoTEConfig.from_dict(card.mote_config)
    except (KeyError, TypeError, SegmoteError) as err:
        raise CheckpointError(f"{path}: bad or missing mote_config in the header ({err})") from None
    if config is not None and config != stored:
        raise CheckpointError(f"{path}: adapter was saved with {stored}, not the requested "
                              f"{config}")
    return stored


def attach_adapter(base: Sam, adapter: str | Path | Literal["new"],
                   config: MoTEConfig | None = None, *, backbone: str | None = None,
                   backbone_sha256: str | None = None) -> SegMoTE:
    """Wrap the frozen `base` in a SegMoTE with a fresh ("new") or saved adapter.

    backbone, backbone_sha256: identity of the base weights (as `segmote.build.load_model` knows
        it); kept on the model so `save_adapter` need not re-hash, and checked against a file.
    Returns the model in eval mode; exactly the adapter parameters require grad.
    """
    if isinstance(adapter, str) and adapter == "new":
        return SegMoTE(base, config, backbone=backbone, backbone_sha256=backbone_sha256).eval()
    path = Path(adapter)
    card = None
    if path.suffix == ".safetensors":
        card = read_adapter_card(path)
        check_backbone(path, card, backbone, backbone_sha256)
        config = _config_from(path, card, config)
    elif not path.is_file():
        raise CheckpointError(f"{path}: adapter file not found")
    else:
        warnings.warn(f"{path}: a pickled adapter carries no metadata; its backbone cannot be "
                      f"verified (save adapters as .safetensors)", stacklevel=2)
    state = read_state_dict(path)  # weights_only=True for pickles: code in a file never runs
    model = SegMoTE(base, config, backbone=backbone, backbone_sha256=backbone_sha256)
    load_strict(model.adapter, state, path)
    model.card = card
    return model.eval()
