"""`AdapterCard`: the typed header of a SegMoTE adapter file, read and checked in one place.

An adapter's `.safetensors` header holds JSON strings (`segmote.adapter.files`). This module is
the only code that knows their keys: it turns them into frozen dataclasses, refuses a value of
the wrong type with one line naming the file and the key (a string vocabulary would otherwise
become one class per letter), and reads every header written so far (older adapters lack
"training_modalities", "presence", "text", "auto", or store a per-class "text_beside_prompt").
Keys it does not know are kept in `extra`, so that rewriting an adapter loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segmote.errors import CheckpointError
from segmote.text.names import normalize_class_name

FORMAT = "segmote-adapter"
FORMAT_VERSION = "1"
# header values stored as plain strings; every other value is JSON
PLAIN_KEYS = ("format", "format_version", "backbone", "backbone_sha256", "segmote_version")
# header keys the format writes itself (callers' metadata may not use them)
RESERVED_KEYS = (*PLAIN_KEYS, "mote_config", "embed_dim")


class _Reader:
    """Typed access to one header section; a wrong type is a CheckpointError naming the key."""

    def __init__(self, where: str, entries: Mapping[str, Any], prefix: str = "") -> None:
        self.where, self.entries, self.prefix = where, entries, prefix

    def _fail(self, key: str, want: str, value: Any) -> CheckpointError:
        return CheckpointError(f"{self.where}: header entry {self.prefix}{key} must be {want}, "
                               f"got {type(value).__name__} {str(value)[:60]!r}")

    def get(self, key: str, kind: type | tuple[type, ...], want: str, default: Any = None) -> Any:
        value = self.entries.get(key, default)
        if value is default:
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise self._fail(key, want, value)
        return value

    def names(self, key: str) -> tuple[str, ...] | None:
        value = self.entries.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of class names", value)
        return tuple(value)

    def mapping(self, key: str, check: Any, want: str) -> dict[str, Any] | None:
        value = self.entries.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(k, str) and check(v)
                                                  for k, v in value.items()):
            raise self._fail(key, want, value)
        return dict(value)

    def section(self, key: str) -> _Reader | None:
        value = self.entries.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._fail(key, "an object", value)
        return _Reader(self.where, value, f"{self.prefix}{key}.")


def decode_header(raw: Mapping[str, str], where: str | Path) -> dict[str, Any]:
    """A safetensors header's string values, JSON decoded (the plain ones as they are);
    CheckpointError naming `where` when it is not a segmote adapter's."""
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a segmote adapter (no format={FORMAT!r} in its "
                              f"header)")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = value if key in PLAIN_KEYS else json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return meta


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


@dataclass(frozen=True)
class TextInfo:
    """The text encoder the adapter was trained with (`segmote.text`): its name, a local path,
    the template class names are put in ("{}" or "a CT of {}"), and the embedding width."""

    encoder: str = "minilm"
    path: str | None = None
    template: str | None = None
    dim: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Calibration:
    """The prompt-free calibration (`segmote.training.calibration`): the confidence threshold,
    per-class logit offsets of prompt-free masks, and whether a class's text is used beside a
    box (older adapters stored that per class; both forms are read)."""

    threshold: float = 0.0
    mask_offsets: dict[str, float] = field(default_factory=dict)
    mask_offset_default: float = 0.0
    text_beside_prompt: dict[str, bool] = field(default_factory=dict)
    text_beside_prompt_default: bool = True
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def mask_offset(self, name: str) -> float:
        return _per_class(self.mask_offsets, name, self.mask_offset_default)

    def uses_text_beside_prompt(self, name: str) -> bool:
        return _per_class(self.text_beside_prompt, name, self.text_beside_prompt_default)


def _per_class(values: Mapping[str, Any], name: str, default: Any) -> Any:
    """A class's value, matched as written, then by its normalised form ("Kidney_L" = "left
    kidney")."""
    if name in values:
        return values[name]
    normal = {normalize_class_name(k): v for k, v in values.items()}
    return normal.get(normalize_class_name(name), default)


@dataclass(frozen=True)
class PresenceInfo:
    """The class presence head's settings (`segmote.modeling.presence`): keep a prompt-free
    mask only where the presence probability reaches `threshold`."""

    threshold: float = 0.5
    negatives: str | None = None
    slices: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class AdapterCard:
    """Everything an adapter file says about itself.

    vocabulary: the classes trained on. training_data: dataset -> its class names.
    training_modalities: dataset -> modality (None: unknown); None for adapters written before
        it was recorded. calibration / presence / text: None where the adapter has none.
    earlier_versions: sha256 of an earlier file of this adapter -> what changed since, for
        header-only rewrites (`rewrite_adapter_header`) whose tensors stayed the same: results
        recorded against those files were computed with these weights.
    extra: header entries this version does not interpret (kept when the adapter is rewritten).
    """

    format_version: str = FORMAT_VERSION
    segmote_version: str | None = None
    backbone: str | None = None
    backbone_sha256: str | None = None
    mote_config: dict[str, Any] | None = None
    embed_dim: int | None = None
    vocabulary: tuple[str, ...] = ()
    training_data: dict[str, tuple[str, ...]] = field(default_factory=dict)
    training_modalities: dict[str, str | None] | None = None
    text: TextInfo | None = None
    calibration: Calibration | None = None
    presence: PresenceInfo | None = None
    training: dict[str, Any] | None = None
    earlier_versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_header(cls, raw: Mapping[str, str], where: str | Path) -> AdapterCard:
        """Decode and check a safetensors header (string values); CheckpointError naming
        `where` when it is not a segmote adapter or a value has the wrong type."""
        return cls.from_metadata(decode_header(raw, where), where)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], where: str | Path) -> AdapterCard:
        """Check decoded header entries (JSON values) and type them."""
        r = _Reader(str(where), meta)
        data = r.mapping("training_data", _is_names, "an object of class-name lists") or {}
        modalities = r.mapping("training_modalities", lambda v: v is None or isinstance(v, str),
                               "an object of modality names")
        known = {"format", "format_version", "segmote_version", "backbone", "backbone_sha256",
                 "mote_config", "embed_dim", "vocabulary", "training_data",
                 "training_modalities", "text", "auto", "presence", "training",
                 "earlier_versions"}
        embed = meta.get("embed_dim")
        if isinstance(embed, str) and embed.isdigit():
            embed = int(embed)
        return cls(
            format_version=str(meta.get("format_version", FORMAT_VERSION)),
            segmote_version=r.get("segmote_version", str, "a string"),
            backbone=r.get("backbone", str, "a string"),
            backbone_sha256=r.get("backbone_sha256", str, "a string"),
            mote_config=r.get("mote_config", dict, "an object"),
            embed_dim=_Reader(str(where), {"embed_dim": embed}).get("embed_dim", int,
                                                                    "an integer"),
            vocabulary=r.names("vocabulary") or (),
            training_data={k: tuple(v) for k, v in data.items()},
            training_modalities=modalities,
            text=_text(r.section("text")),
            calibration=_calibration(r.section("auto")),
            presence=_presence(r.section("presence")),
            training=r.get("training", dict, "an object"),
            earlier_versions=r.mapping("earlier_versions", lambda v: isinstance(v, str),
                                       "an object of sha256 -> change") or {},
            extra={k: v for k, v in meta.items() if k not in known})

    def classes_for_modality(self, modality: str | None) -> list[str] | None:
        """The vocabulary classes that the training datasets of `modality` label, plus those of
        datasets of unknown modality (vocabulary order); None when that cannot be told: no
        modality, no "training_modalities" (older adapters), or no dataset of that modality.
        Prompt-free mode asks only these, since a class of another domain is absent by
        construction yet may still get a mask (docs/text_and_ppt.md)."""
        modalities, data = self.training_modalities, self.training_data
        if modality is None or not modalities or not data or modality not in modalities.values():
            return None
        names = {n for d, m in modalities.items() if m in (modality, None)
                 for n in data.get(d, ())}
        return [c for c in self.vocabulary if c in names]


def _text(r: _Reader | None) -> TextInfo | None:
    if r is None:
        return None
    return TextInfo(encoder=r.get("encoder", str, "a string", "minilm"),
                    path=r.get("path", str, "a string"),
                    template=r.get("template", str, "a string"),
                    dim=r.get("dim", int, "an integer"), raw=dict(r.entries))


def _calibration(r: _Reader | None) -> Calibration | None:
    if r is None:
        return None
    return Calibration(
        threshold=r.get("threshold", float, "a number", 0.0),
        mask_offsets=r.mapping("mask_offsets", _is_number, "an object of numbers") or {},
        mask_offset_default=r.get("mask_offset_default", float, "a number", 0.0),
        text_beside_prompt=r.mapping("text_beside_prompt", lambda v: isinstance(v, bool),
                                     "an object of true / false") or {},
        text_beside_prompt_default=r.get("text_beside_prompt_default", bool, "true or false",
                                         True),
        raw=dict(r.entries))


def _presence(r: _Reader | None) -> PresenceInfo | None:
    if r is None:
        return None
    return PresenceInfo(threshold=r.get("threshold", float, "a number", 0.5),
                        negatives=r.get("negatives", str, "a string"),
                        slices=r.get("slices", int, "an integer"), raw=dict(r.entries))

