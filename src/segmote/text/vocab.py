"""Embeddings of class names, cached on disk per (text encoder, template).

A dataset's class names are few and fixed, while the encoder takes seconds to load; so each name is
encoded once and kept in ``$SEGMOTE_HOME/text/<encoder id>-<template hash>.safetensors`` (default
``~/.cache/segmote/text/``). The encoder id carries the weights' hash, so other weights never read
stale vectors. The cache is disposable: an unreadable file is rebuilt with a warning, and a cache
that cannot be written only costs a re-encode next time.

`vocab_to_tensors` / `vocab_from_tensors` pack names + embeddings as plain tensors, the form an
adapter file (or this cache) stores.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from segmote.atomic import atomic_path
from segmote.text.encoder import TextEncoder, load_text_encoder
from segmote.text.names import PAPER_TEMPLATE, normalize_class_name

_FORMAT = "segmote-text-vocab-1"


def default_cache_dir() -> Path:
    """``$SEGMOTE_HOME/text`` (``~/.cache/segmote/text`` unless SEGMOTE_HOME is set)."""
    from segmote.samples import segmote_home
    return segmote_home() / "text"


def vocab_to_tensors(names: Sequence[str], embeddings: Tensor,
                     prefix: str = "text_vocab.") -> dict[str, Tensor]:
    """names (N,) + embeddings (N, dim) -> {prefix+"names": uint8 UTF-8 JSON bytes (L,),
    prefix+"embeddings": (N, dim) float32}; safetensors stores tensors only, hence the bytes."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        raise ValueError(f"{len(names)} names but embeddings of shape {tuple(embeddings.shape)}")
    raw = json.dumps(list(names), ensure_ascii=False).encode("utf-8")
    return {prefix + "names": torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone(),
            prefix + "embeddings": embeddings.detach().to("cpu", torch.float32).contiguous()}


def vocab_from_tensors(tensors: dict[str, Tensor],
                       prefix: str = "text_vocab.") -> tuple[list[str], Tensor]:
    """The inverse of `vocab_to_tensors`: (names (N,), embeddings (N, dim)).

    Raises KeyError / ValueError when the entries are missing or do not fit together.
    """
    raw = bytes(tensors[prefix + "names"].to(torch.uint8).tolist())
    names = json.loads(raw.decode("utf-8"))
    emb = tensors[prefix + "embeddings"]
    if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
            or emb.ndim != 2 or emb.shape[0] != len(names)):
        raise ValueError(f"{len(names)} names do not fit embeddings of shape {tuple(emb.shape)}")
    return names, emb.float()


class TextVocabulary:
    """Embeddings of class names for one encoder + template, encoded only when not cached.

    template: the sentence around the normalised name (see `segmote.text.names.prompt_text`);
        "{}" embeds the bare phrase.
    cache_dir: folder of the cache files (default `default_cache_dir()`).
    """

    def __init__(self, encoder: TextEncoder, template: str = PAPER_TEMPLATE,
                 cache_dir: str | Path | None = None) -> None:
        self.encoder, self.template = encoder, template
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        key = hashlib.sha256(template.encode("utf-8")).hexdigest()[:8]
        self.path = folder / f"{encoder.id}-{key}.safetensors"
        self._table: dict[str, Tensor] | None = None  # normalised name -> (dim,)

    def _read(self) -> dict[str, Tensor]:
        if not self.path.is_file():
            return {}
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
            if (meta.get("format"), meta.get("encoder"), meta.get("template")) != \
                    (_FORMAT, self.encoder.id, self.template):
                raise ValueError("written for another encoder or template")
            names, emb = vocab_from_tensors(load_file(str(self.path)), prefix="")
            if emb.shape[1] != self.encoder.dim:
                raise ValueError(f"{emb.shape[1]}-d embeddings, the encoder gives "
                                 f"{self.encoder.dim}")
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
            # a killed writer cannot cause this (writes are atomic), a foreign file can
            warnings.warn(f"{self.path}: unreadable text embedding cache ({err}); rebuilding it",
                          stacklevel=3)
            return {}
        return dict(zip(names, emb))

    def _write(self, table: dict[str, Tensor]) -> None:
        names = list(table)
        tensors = vocab_to_tensors(names, torch.stack([table[n] for n in names]), prefix="")
        meta = {"format": _FORMAT, "encoder": self.encoder.id, "template": self.template}
        try:
            with atomic_path(self.path, suffix=".safetensors") as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        except OSError as err:  # e.g. a read-only home: the vectors are still returned
            warnings.warn(f"{self.path}: cannot write the text embedding cache ({err})",
                          stacklevel=3)

    def embed(self, names: Sequence[str]) -> Tensor:
        """Class names (N,) -> (N, dim) float32 unit-norm rows, in the order given.

        Names are normalised first ("Kidney_L" and "left-kidney" share one entry); the encoder
        runs once, on the phrases not cached yet, and the cache file is rewritten only then.
        """
        if isinstance(names, str):
            raise TypeError("embed() takes a list of class names, not one string")
        if self._table is None:
            self._table = self._read()
        phrases = [normalize_class_name(n) for n in names]
        new = [p for p in dict.fromkeys(phrases) if p not in self._table]
        if new:
            emb = self.encoder.encode([self.template.format(p) for p in new])
            self._table.update(zip(new, emb))
            self._write(self._table)
        if not phrases:
            return torch.empty(0, self.encoder.dim)
        return torch.stack([self._table[p] for p in phrases])


def embed_names(names: Sequence[str], encoder: TextEncoder | None = None,
                template: str = PAPER_TEMPLATE, cache_dir: str | Path | None = None) -> Tensor:
    """Class names (N,) -> (N, dim) embeddings through the on-disk cache (see `TextVocabulary`).

    encoder: default `load_text_encoder()` (MiniLM; its id needs the loaded model).
    """
    enc = encoder if encoder is not None else load_text_encoder()
    return TextVocabulary(enc, template, cache_dir).embed(names)
