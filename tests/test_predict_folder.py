"""Folders of cases (nnU-Net naming, prompts file) and sharding them over ranks: library level.
The command line, a failed case among good ones, and two torchrun ranks: test_cli_folder.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from segmote.errors import InputError
from segmote.predict.cases import (Case, CasePrompts, is_case_folder, list_cases,
                                   read_prompts_file)
from segmote.predict.folder import FolderReport, case_request, predict_cases, shard
from segmote.predict.pipeline import PredictOptions
from segmote.predict.prompts import PromptNumbers
from segmote.samples import bundled_sample_path

LUNG = bundled_sample_path("lung2_ct_crop")
NUCLEI = bundled_sample_path("nuclei")


def test_nnunet_names_channels_and_dicom_subfolders(tmp_path):
    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0000.png", "c.nrrd", "notes.txt",
                 "prompts.json", ".hidden.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d_series").mkdir()
    cases = list_cases(tmp_path)
    assert [(c.name, c.path.name, c.ending) for c in cases] == [
        ("a", "a_0000.png", ".png"), ("b", "b_0000.nii.gz", ".nii.gz"), ("c", "c.nrrd", ".nrrd"),
        ("d_series", "d_series", "")]
    assert [c.name for c in list_cases(tmp_path, channel=1)] == ["b", "c", "d_series"]
    out = tmp_path / "out"
    assert [c.output(out).name for c in cases] == ["a.png", "b.nii.gz", "c.nrrd",
                                                   "d_series.nii.gz"]
    assert cases[1].output(out, ".seg.nrrd") == out / "b.seg.nrrd"
    assert is_case_folder(tmp_path)


def test_a_dicom_series_folder_is_not_a_folder_of_cases(tmp_path):
    (tmp_path / "series").mkdir()
    for n in range(3):
        (tmp_path / "series" / f"IM{n}.dcm").write_bytes(b"")
    (tmp_path / "series" / "IM3").write_bytes(b"")  # DICOM files often have no ending
    assert not is_case_folder(tmp_path / "series")
    assert is_case_folder(tmp_path)  # a folder of series folders is
    assert not is_case_folder(LUNG)


def test_two_files_for_one_case_and_empty_folders(tmp_path):
    (tmp_path / "x_0000.nii.gz").write_bytes(b"")
    (tmp_path / "x.nii").write_bytes(b"")
    with pytest.raises(InputError, match="two inputs for case 'x'"):
        list_cases(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        list_cases(tmp_path / "empty")


def _cases(*names: str) -> list[Case]:
    return [Case(n, Path(f"{n}_0000.nii.gz"), ".nii.gz") for n in names]


def test_prompts_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({
        "a": {"boxes": [[83, 93, 0, 173, 162, 14]], "text": "tumour"},
        "b": {"points": [[120, 80, 7], "100,60,7,0"], "labels": [2]},
        "c": {"text": ["Hippocampus_L", "Hippocampus_R"]}}))
    prompts = read_prompts_file(path, _cases("a", "b", "c", "d"))
    assert prompts == {
        "a": CasePrompts(PromptNumbers(boxes=((83, 93, 0, 173, 162, 14),)), ["tumour"]),
        "b": CasePrompts(PromptNumbers(points=((120, 80, 7), (100, 60, 7, 0)), labels=(2,))),
        "c": CasePrompts(text=["Hippocampus_L", "Hippocampus_R"])}


def test_case_request_maps_prompts_onto_the_run_options():
    base = PredictOptions(adapter=None, classes=["liver"], window="lung")
    numbers, opts = case_request(None, base)  # no entry: automatic mode, the run's classes
    assert not numbers and opts.auto and opts.classes == ["liver"] and opts.window == "lung"
    box = PromptNumbers(boxes=((1, 2, 3, 4),), labels=(5,))
    numbers, opts = case_request(CasePrompts(box, ["tumour"]), base)
    assert numbers == box and opts.text == "tumour" and not opts.auto and opts.classes is None
    one = CasePrompts(PromptNumbers(labels=(3,)), ["nuclei"])  # one class alone, value 3
    numbers, opts = case_request(one, base)
    assert numbers.labels == (3,) and opts.text == "nuclei" and not opts.auto
    numbers, opts = case_request(CasePrompts(text=["a", "b"]), base)
    assert not numbers and opts.auto and opts.classes == ["a", "b"] and opts.text is None


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1"),
    ("[1, 2]", "expected an object"),
    ('{"zz": {"boxes": [[1, 2, 3, 4]]}}', "cases not in the input folder: zz"),
    ('{"a": {"boxes": [[1, "2", 3, 4]]}}', "case 'a': each of 'boxes' must be a list of numbers"),
    ('{"a": {"box": [[1, 2, 3, 4]]}}', "case 'a': unknown key 'box'"),
    ('{"a": {}}', "case 'a': no boxes, points or text"),
    ('{"a": {"text": [""]}}', "'text' must be a class name"),
    ('{"a": {"text": "x", "labels": [1.5]}}', "'labels' must be a list of integers"),
    ('{"a": {"boxes": ["1,2,x"]}}', "case 'a': boxes '1,2,x': expected comma-separated"),
    ('{"a": {"boxes": [[1, 2, 3, 4]], "text": ["x", "y"]}}', "give one class name"),
    ('{"a": {"text": ["x", "y"], "labels": [1, 2]}}', "drop 'labels'"),
])
def test_bad_prompts_files_give_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)) as err:
        read_prompts_file(path, _cases("a"))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_shards_cover_every_case_once():
    cases = _cases(*"abcdefg")
    for world in (1, 2, 3, 8):
        parts = [shard(cases, r, world) for r in range(world)]
        names = sorted(c.name for part in parts for c in part)
        assert names == list("abcdefg")
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.slow  # the real model, twice
def test_a_failed_case_is_reported_and_the_rest_go_on(tmp_path):
    """Real prediction per case (the single-file predict function, base model), one broken
    image among them."""
    from segmote.predict.pipeline import predict_file

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(NUCLEI, src / "cells_0000.png")
    (src / "broken_0000.png").write_bytes(b"\x89PNG not really")
    shutil.copy(NUCLEI, src / "more_0000.png")

    def predict_case(case: Case, out: Path) -> Path:
        box = PromptNumbers(boxes=((416, 350, 446, 374),))
        return predict_file(case.path, out, box, PredictOptions(adapter=None)).output

    report = predict_cases(list_cases(src), tmp_path / "out", predict_case)
    assert sorted(report.written) == ["cells", "more"]
    assert list(report.failed) == ["broken"] and "broken_0000.png" in report.failed["broken"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.png", "more.png"]
    assert report.summary().startswith("2 of 3 cases written; 1 failed:\n  broken: ")
    assert FolderReport({"a": (Path("a"), 0)}).summary() == "1 of 1 cases written"
