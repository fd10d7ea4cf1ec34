"""Class names -> text-prompt embeddings, the one path training and prediction share.

A class name ("Hippocampus_L") is normalised ("left hippocampus"), put in the template the adapter
was trained with (the bare phrase for MiniLM, "A segmentation area of a {}." for CLIP) and embedded
by the frozen text encoder. The adapter records encoder, template and width in its metadata ("text"), so prediction
embeds names exactly as training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from segmote.text.names import PAPER_TEMPLATE

# The paper's template is for CLIP. With MiniLM it squeezes the classes together (cosine left vs
# right kidney 0.87 as bare phrases, 0.97 in the template; liver vs polyp 0.25 vs 0.53: measured
# in tests/test_text.py), and AAL alone has 58 left/right pairs: MiniLM gets the bare phrase.
DEFAULT_TEMPLATES = {"minilm": "{}", "clip": PAPER_TEMPLATE}


@dataclass
class ClassTexts:
    """names: as given; embeddings: (N, dim) float32, unit norm; encoder: "minilm" / "clip";
    encoder_id: the encoder's id (name + weights hash); path: a CLIP folder or None."""

    names: list[str]
    embeddings: Tensor
    encoder: str
    encoder_id: str
    template: str
    path: str | None = None

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def metadata(self) -> dict[str, Any]:
        """What an adapter records about its text prompts."""
        return {"encoder": self.encoder, "id": self.encoder_id, "template": self.template,
                "dim": self.dim, "path": self.path}


def class_embeddings(names: Sequence[str], encoder_name: str = "minilm",
                     path: str | None = None, encoder: Any = None,
                     template: str | None = None) -> ClassTexts:
    """Embed class names for text prompts.

    encoder_name, path: which frozen text encoder (`segmote.text.encoder.load_text_encoder`);
    encoder: an already loaded one (wins over the name). template: default
    DEFAULT_TEMPLATES[encoder_name].
    """
    from segmote.text.encoder import load_text_encoder
    from segmote.text.names import prompt_text

    template = template or DEFAULT_TEMPLATES.get(encoder_name, PAPER_TEMPLATE)
    enc = encoder if encoder is not None else load_text_encoder(encoder_name, path)
    emb = enc.encode([prompt_text(n, template) for n in names]).float()
    return ClassTexts(list(names), emb, encoder_name, str(enc.id), template, path)
