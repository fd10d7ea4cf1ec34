"""Which classes a prompt-free training / calibration query may ask for as absent: the slice's
own dataset's missing classes and, with `absent_other_modalities`, the classes of other
modalities (`segmote.training.loader.other_modality_classes`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from segmote.errors import InputError
from segmote.training.config import load_config
from segmote.training.loader import CachedSlices, other_modality_classes
from segmote.training.run_data import query_tables


def _sample(dataset: str, modality: str | None, name: str, value: int = 1) -> SimpleNamespace:
    return SimpleNamespace(dataset=dataset, modality=modality, class_name=name,
                           class_value=value)


SAMPLES = [
    _sample("ct", "CT", "tumour"),
    _sample("mr_tumour", "MR", "tumour"),
    _sample("atlas", "MR", "A", 1), _sample("atlas", "MR", "B", 2),
    _sample("cells", "fluorescence microscopy", "nuclei"),
    _sample("mystery", None, "X"), _sample("mystery", None, "nuclei", 2),
]


def test_other_modality_classes_are_those_no_dataset_of_the_modality_labels() -> None:
    other = other_modality_classes(SAMPLES)
    # "tumour" is labelled on CT and on MR: never another modality's class
    assert other["ct"] == ["A", "B"]
    assert other["atlas"] == [] and other["mr_tumour"] == []  # A, B are MR classes themselves
    assert other["cells"] == ["A", "B", "tumour"]
    # a dataset of unknown modality gets none, and its classes (X, and nuclei, which it
    # labels too) are nobody's negatives: it may image anything
    assert "mystery" not in other
    assert all("X" not in v and "nuclei" not in v for v in other.values())


def test_absent_adds_other_classes_but_never_the_samples_own_or_a_present_one() -> None:
    classes = {"atlas": {1: "A", 2: "B", 3: "C"}}
    plain = CachedSlices(None, [], 0, classes)
    both = CachedSlices(None, [], 0, classes, other={"atlas": ["nuclei", "A"]})
    s = _sample("atlas", "MR", "A", 1)
    label = torch.tensor([[0, 1], [1, 0]])  # A present; B, C absent
    assert plain.absent(s, label) == ["B", "C"]
    assert both.absent(s, label) == ["B", "C", "nuclei"]  # "A" is the sample's own class
    label_b = torch.tensor([[0, 1], [2, 0]])  # B present too
    assert both.absent(s, label_b) == ["C", "nuclei"]
    # another dataset's samples get nothing from this dataset's `other`
    assert both.absent(_sample("ct", "CT", "tumour"), label) == []


def test_query_tables_follow_the_config_switch() -> None:
    off = query_tables(load_config(), SAMPLES)
    on = query_tables(load_config(overrides={"absent_other_modalities": True}), SAMPLES)
    assert off["other"] is None and on["classes"] == off["classes"]
    assert on["other"] == other_modality_classes(SAMPLES)
    assert on["classes"]["atlas"] == {1: "A", 2: "B"}


def test_config_refuses_a_non_boolean_switch() -> None:
    with pytest.raises(InputError, match="absent_other_modalities"):
        load_config(overrides={"absent_other_modalities": "yes"})


def test_default_adapter_recipe_leaves_other_modality_negatives_off() -> None:
    """The shipped adapter was trained without them: a trial with them on lost prompt-free
    nuclei (docs/text_and_ppt.md), so the recipe that reproduces the shipped file keeps them
    off."""
    from segmote.training.default_adapter import config_path

    for stage in ("box", "text"):
        assert load_config(config_path(stage)).prompts.absent_other_modalities is False
