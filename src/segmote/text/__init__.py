"""Offline text prompts: class names -> normalised phrases -> frozen text-encoder embeddings.

    from segmote.text import load_text_encoder, embed_names, prompt_text
    enc = load_text_encoder()                       # all-MiniLM-L6-v2, 384-d, cached per process
    emb = embed_names(["Kidney_L", "liver"], enc)   # (2, 384), cached on disk per encoder+template

`transformers` is imported only when an encoder is loaded.
"""

from __future__ import annotations

from segmote.text.encoder import (CLIPTextEncoder, MiniLMEncoder, TextEncoder, load_text_encoder,
                                  minilm_model_dir)
from segmote.text.names import PAPER_TEMPLATE, normalize_class_name, prompt_text
from segmote.text.vocab import (TextVocabulary, default_cache_dir, embed_names, vocab_from_tensors,
                                vocab_to_tensors)

__all__ = ["CLIPTextEncoder", "MiniLMEncoder", "PAPER_TEMPLATE", "TextEncoder", "TextVocabulary",
           "default_cache_dir", "embed_names", "load_text_encoder", "minilm_model_dir",
           "normalize_class_name", "prompt_text", "vocab_from_tensors", "vocab_to_tensors"]
