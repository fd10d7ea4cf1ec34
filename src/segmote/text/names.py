"""Class names as they appear in dataset.json files, turned into text prompts.

Datasets spell the same structure many ways ("Kidney_L", "kidney_left", "Left-Kidney"); the text
encoder should see one phrase ("left kidney") so that the same organ gets the same embedding and the
side is a word the encoder knows, not a letter it has to guess.
"""

from __future__ import annotations

import re

PAPER_TEMPLATE = "A segmentation area of a {}."  # SegMoTE's prompt template (docs/method.md)

# Side markers accepted as a whole word at the start or the end of a name.
_SIDES = {"l": "left", "left": "left", "lt": "left", "r": "right", "right": "right", "rt": "right"}


def normalize_class_name(name: str) -> str:
    """A dataset class name as a lower-case phrase with the side, if any, in front.

    Underscores and hyphens become spaces, whitespace collapses, and one side marker
    (L/R, left/right, lt/rt as a separate word) at the start or the end becomes a leading
    "left"/"right":

        "Hippocampus_L" -> "left hippocampus"      "Left-Kidney" -> "left kidney"
        "kidney_right" -> "right kidney"           "Cerebelum_4_5_L" -> "left cerebelum 4 5"
        "Frontal_Sup_Orb_R" -> "right frontal sup orb"   "nuclei" -> "nuclei"

    A name that is only a side marker ("L") is kept as that word (lower case): there is
    nothing to move it in front of.
    """
    words = re.sub(r"[_\-\s]+", " ", name).strip().lower().split()
    if len(words) > 1:
        if words[-1] in _SIDES:  # only one marker moves; the suffix form is the common one
            return " ".join([_SIDES[words[-1]], *words[:-1]])
        if words[0] in _SIDES:
            return " ".join([_SIDES[words[0]], *words[1:]])
    return " ".join(words)


def prompt_text(name: str, template: str = PAPER_TEMPLATE) -> str:
    """The sentence fed to the text encoder: `template` with the normalised class name in "{}".

    "kidney_right" -> "A segmentation area of a right kidney."; template="{}" gives the bare phrase.
    """
    return template.format(normalize_class_name(name))
