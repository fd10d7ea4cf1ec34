"""The typed boundaries of prediction: prompts parsed once, errors that name parameters (the CLI
spells them as flags), and the adapter card that checks header types."""

from __future__ import annotations

import json

import pytest

from segmote.adapter import AdapterCard, read_adapter_card
from segmote.build import DEFAULT_ADAPTER
from segmote.cli.main import main
from segmote.errors import CheckpointError, ParameterError
from segmote.predict.prompts import ObjectPrompt, PromptNumbers, parse_numbers
from segmote.samples import bundled_sample_path


def test_prompt_numbers_read_against_the_image() -> None:
    numbers = PromptNumbers(boxes=((1, 2, 30, 40),), points=((5, 6, 0),))
    # 2-D: a point's third number is its label; the points refine the single box
    assert numbers.to_objects(is_volume=False, depth=1) == [
        ObjectPrompt(label=1, box=(1, 2, 30, 40), points=[(5, 6)], point_labels=[0])]
    # a volume of one slice takes the 2-D forms; a deeper one wants x, y, z
    (one,) = numbers.to_objects(is_volume=True, depth=1)
    assert one.box == (1, 2, 0, 30, 40, 0) and one.points == [(5, 6, 0)]
    with pytest.raises(ParameterError, match="expected 6 numbers") as err:
        numbers.to_objects(is_volume=True, depth=9)
    assert err.value.param == "box" and str(err.value).startswith("box '1,2,30,40'")
    labelled = PromptNumbers(boxes=((1, 2, 3, 4), (5, 6, 7, 8)), labels=(3, 300))
    assert [o.label for o in labelled.to_objects(False, 1)] == [3, 300]
    with pytest.raises(ParameterError, match="between 1 and 65535"):
        PromptNumbers(boxes=((1, 2, 3, 4),), labels=(0,)).to_objects(False, 1)


def test_errors_name_parameters_and_the_cli_maps_them_to_flags(tmp_path, capsys) -> None:
    with pytest.raises(ParameterError) as err:
        parse_numbers("a,b", "point")
    assert str(err.value) == "point 'a,b': expected comma-separated numbers"
    assert err.value.render({"point": "--point"}).startswith("--point 'a,b'")
    rc = main(["predict", "-q", "-i", str(bundled_sample_path("nuclei")), "-o",
               str(tmp_path / "m.png"), "--box", "1,2,30,40", "--label", "1", "--label", "2"])
    err_line = capsys.readouterr().err
    assert rc == 1 and "2 --label values for 1 objects" in err_line, err_line


def test_card_of_the_shipped_adapter() -> None:
    card = read_adapter_card(DEFAULT_ADAPTER)
    assert card.backbone == "litemedsam" and card.embed_dim == 256
    assert "nuclei" in card.vocabulary and card.text is not None and card.text.dim == 384
    assert card.calibration is not None and card.calibration.mask_offset("nuclei") > 0
    assert card.presence is not None and 0 < card.presence.threshold < 1
    # recorded after training (segmote.training.default_adapter record-modalities): the one
    # class of the CT dataset for `--auto -m CT`, not all 119
    assert card.training_modalities == {
        "Dataset001_PyradiomicsCT": "CT", "Dataset002_PyradiomicsMR": "MR",
        "Dataset005_NucleiQuadrants": "MICROSCOPY", "Dataset006_Colin27AALSlabs": "MR",
        "Dataset007_Colin27BrainSlabs": "MR"}
    assert card.classes_for_modality("CT") == ["tumour"]
    assert card.classes_for_modality("MICROSCOPY") == ["nuclei"]
    mr = card.classes_for_modality("MR")
    assert len(mr) == 118 and "nuclei" not in mr and {"brain", "tumour"} <= set(mr)
    # the file the benchmark results name: the same tensors, the header rewritten since
    assert "197ada19439daebd613641f6492e6199f374da43557ef14c9cce27f1c84688f0" in \
        card.earlier_versions


@pytest.mark.parametrize("key, value, needle", [
    ("vocabulary", "liver", "vocabulary must be a list of class names"),
    ("training_data", {"d": "liver"}, "training_data must be an object of class-name lists"),
    ("auto", {"threshold": "0.5"}, "auto.threshold must be a number"),
    ("auto", {"mask_offsets": {"liver": True}}, "auto.mask_offsets must be an object of num"),
    ("presence", [0.5], "presence must be an object"),
    ("text", {"dim": 3.5}, "text.dim must be an integer"),
])
def test_card_refuses_wrong_types_in_one_line(key, value, needle) -> None:
    header = {"format": "segmote-adapter", key: json.dumps(value)}
    with pytest.raises(CheckpointError, match=needle) as err:
        AdapterCard.from_header(header, "a.safetensors")
    assert str(err.value).startswith("a.safetensors: header entry") and "\n" not in str(err.value)
