"""`AdapterCard` reads every adapter header the repository has produced: the shipped adapter and
each earlier version of it (headers taken from git history into tests/data/adapter_headers), and
what the trainer writes today."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from segmote.adapter import AdapterCard, read_adapter_card
from segmote.build import DEFAULT_ADAPTER
from segmote.modeling.segmote import MoTEConfig

HEADERS = sorted((Path(__file__).parent / "data" / "adapter_headers").glob("*.json"))


def test_every_older_header_variant_is_present() -> None:
    # the six earlier versions of the shipped adapter: box/point only, + text and PPT, + mask
    # offsets, + a per-class text choice, + presence head, + one text choice for all classes
    assert len(HEADERS) == 6


@pytest.mark.parametrize("path", HEADERS, ids=lambda p: p.stem)
def test_older_shipped_headers_load(path: Path) -> None:
    header = json.loads(path.read_text())
    card = AdapterCard.from_header(header, path.name)
    assert card.backbone == "litemedsam" and card.embed_dim == 256
    assert MoTEConfig.from_dict(card.mote_config).num_expert_tokens == 4
    assert "nuclei" in card.vocabulary
    assert card.training_data["Dataset005_NucleiQuadrants"] == ("nuclei",)
    assert card.training_modalities is None and card.extra == {}
    if "auto" not in header:  # the box / point adapter: no text, no calibration
        assert card.text is None and card.calibration is None and card.presence is None
        return
    calib = json.loads(header["auto"])
    assert card.text is not None and card.text.encoder == "minilm"
    assert card.calibration.threshold == calib["threshold"]
    want = calib.get("mask_offsets", {}).get("nuclei", calib.get("mask_offset_default", 0.0))
    assert card.calibration.mask_offset("nuclei") == want
    per_class = calib.get("text_beside_prompt") or {}
    for name in list(per_class)[:3]:  # older calibrations chose per class
        assert card.calibration.uses_text_beside_prompt(name) is per_class[name]
    assert (card.presence is not None) == ("presence" in header)


def test_the_shipped_adapter_and_a_trainer_header() -> None:
    shipped = read_adapter_card(DEFAULT_ADAPTER)
    assert shipped.presence is not None and shipped.calibration.text_beside_prompt == {}
    newest = HEADERS[0].with_name("default_ffd3046.json")  # the last commit that changed it
    # since then only its datasets' modalities were recorded (tensors unchanged)
    assert shipped.training_modalities and shipped.earlier_versions
    assert replace(shipped, training_modalities=None, earlier_versions={}) == \
        AdapterCard.from_header(json.loads(newest.read_text()), newest.name)
    # what `segmote train` writes now also records each dataset's modality
    card = AdapterCard.from_metadata({
        "format": "segmote-adapter", "vocabulary": ["nuclei", "tumour"],
        "training_data": {"cells": ["nuclei"], "lungs": ["tumour"]},
        "training_modalities": {"cells": "MICROSCOPY", "lungs": "CT"}}, "run")
    assert card.classes_for_modality("CT") == ["tumour"]
    assert card.classes_for_modality("MR") is None


def test_rewrite_header_keeps_every_tensor_and_refuses_bad_entries(tmp_path: Path) -> None:
    import hashlib
    import shutil

    from safetensors.torch import load_file

    from segmote.adapter import read_adapter_metadata, rewrite_adapter_header
    from segmote.errors import CheckpointError, InputError

    source = tmp_path / "a.safetensors"
    shutil.copy(DEFAULT_ADAPTER, source)
    out = rewrite_adapter_header(source, tmp_path / "b.safetensors", {"note": "x",
                                 "training_modalities": {"Dataset001_PyradiomicsCT": None}})
    before, after = load_file(source), load_file(out)
    assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)
    old, new = read_adapter_metadata(source), read_adapter_metadata(out)
    assert new.pop("note") == "x" and new.pop("training_modalities") == {
        "Dataset001_PyradiomicsCT": None}
    old.pop("training_modalities")
    assert new == old  # every other entry as it was
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="keys backbone are reserved"):
        rewrite_adapter_header(source, source, {"backbone": "sam"})
    with pytest.raises(CheckpointError, match="training_modalities must be an object"):
        rewrite_adapter_header(source, source, {"training_modalities": ["CT"]})
    with pytest.raises(CheckpointError, match="earlier_versions must be an object"):
        rewrite_adapter_header(source, source, {"earlier_versions": {"abc": 1}})
    assert hashlib.sha256(source.read_bytes()).hexdigest() == sha  # refused: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_a_resave_drops_earlier_versions(tmp_path: Path) -> None:
    # a resave changes tensors or settings: the files listed no longer share them
    from segmote.adapter import read_adapter_metadata, resave_adapter
    from segmote.build import load_model

    out = resave_adapter(load_model(), DEFAULT_ADAPTER, tmp_path / "r.safetensors",
                         {"note": "recalibrated"})
    card = read_adapter_card(out)
    assert card.earlier_versions == {} and card.extra == {"note": "recalibrated"}
    assert card.training_modalities == read_adapter_card(DEFAULT_ADAPTER).training_modalities
    assert "earlier_versions" in read_adapter_metadata(DEFAULT_ADAPTER)
