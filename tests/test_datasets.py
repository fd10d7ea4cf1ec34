"""segmote.data.datasets on real data: the three folder layouts, patient-level splits, slice
samples cut exactly as inference cuts them, explicit skip counts and one-line errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import segmote.data.datasets as datasets_mod
from segmote.data.datasets import (Case, DatasetInfo, discover, load_split, make_split,
                                   save_split, slice_samples)
from segmote.errors import InputError
from segmote.slicing import volume_slice
from segmote.io import read_image

MR = "pyradiomics/Dataset002_PyradiomicsMR"
CT = "pyradiomics/Dataset001_PyradiomicsCT"


@pytest.fixture
def home(samples_home) -> Path:
    """Folder of the fetched sample datasets (`samples_home` is segmote's home)."""
    return Path(samples_home) / "samples"


def assert_one_line(excinfo, name: str) -> None:
    message = str(excinfo.value)
    assert name in message and "\n" not in message, message


def make_msd(home: Path, out: Path) -> Path:
    """A tiny Decathlon-style folder (NIfTI, value -> name labels) from the real MR tumours."""
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True)
    training = []
    for case in ("brain1", "breast1"):
        for kind, src in (("imagesTr", f"imagesTr/{case}_0000.nrrd"),
                          ("labelsTr", f"labelsTr/{case}.nrrd")):
            data = read_image(home / MR / src)
            nib.Nifti1Image(np.asarray(data.array), data.meta["affine"]).to_filename(
                out / kind / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz",
                         "label": f"./labelsTr/{case}.nii.gz"})
    (out / "dataset.json").write_text(json.dumps({
        "name": "Tumours", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "tumour"}, "training": training}))
    return out


def make_2d(home: Path, out: Path) -> Path:
    """A 2-D images/ + labels/ folder without dataset.json: four tiles of the real nuclei image."""
    img = read_image(home / "nuclei/images/nuclei_000.png").array
    lab = read_image(home / "nuclei/labels/nuclei_000.png").array
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for n, (r, c) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        tile = (slice(r, r + 256), slice(c, c + 256))
        Image.fromarray(img[tile]).save(out / "images" / f"tile{n}.png")
        Image.fromarray((lab[tile] * 3).astype(np.uint8)).save(out / "labels" / f"tile{n}.png")
    return out


# ------------------------------------------------------------------ discovery

def test_discover_nnunet_and_2d_samples(home):
    ct, mr, aal, nuclei = discover([home / CT, home / MR,
                                    home / "colin27/Dataset003_Colin27AAL",
                                    home / "nuclei"])
    assert (ct.name, ct.modality, ct.labels, ct.is_3d) == \
        ("Dataset001_PyradiomicsCT", "CT", {1: "tumour"}, True)
    assert [c.case_id for c in ct.cases] == ["lung1", "lung2"]
    assert ct.cases[0].image.name == "lung1_0000.nrrd" and ct.cases[0].label.name == "lung1.nrrd"
    assert mr.modality == "MR" and len(mr.cases) == 3
    assert mr.patient_of_case["breast1"] == "pyradiomics-breast1"
    assert len(aal.labels) == 116 and aal.labels[1] == "Precentral_L"
    assert (nuclei.modality, nuclei.is_3d, nuclei.labels) == ("MICROSCOPY", False, {1: "nuclei"})


def test_discover_msd(home, tmp_path):
    (d,) = discover([make_msd(home, tmp_path / "Task01_Tumours")])
    assert d.name == "Task01_Tumours"
    assert (d.modality, d.labels, d.is_3d) == ("MR", {1: "tumour"}, True)
    assert [c.case_id for c in d.cases] == ["brain1", "breast1"]
    assert d.cases[1].label == tmp_path / "Task01_Tumours" / "./labelsTr/breast1.nii.gz"


def test_discover_2d_folder_without_json(home, tmp_path):
    (d,) = discover([make_2d(home, tmp_path / "cells")])
    assert (d.modality, d.is_3d, d.labels) == (None, False, {3: "class_3"})
    assert [c.case_id for c in d.cases] == ["tile0", "tile1", "tile2", "tile3"]


def test_bad_folders(home, tmp_path):
    with pytest.raises(InputError) as e:
        discover([tmp_path / "nowhere"])
    assert_one_line(e, "nowhere")

    (tmp_path / "odd").mkdir()
    with pytest.raises(InputError, match="unknown dataset layout") as e:
        discover([tmp_path / "odd"])
    assert_one_line(e, "odd")

    empty = tmp_path / "Dataset009_Empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    shutil.copy(home / CT / "dataset.json", empty)
    with pytest.raises(InputError, match="no cases") as e:
        discover([empty])
    assert_one_line(e, "Dataset009_Empty")

    nolabel = shutil.copytree(home / MR, tmp_path / "Dataset010_NoLabel")
    (nolabel / "labelsTr/brain2.nrrd").unlink()
    with pytest.raises(InputError, match="has no label") as e:
        discover([nolabel])
    assert_one_line(e, "brain2_0000.nrrd")

    shape = shutil.copytree(home / MR, tmp_path / "Dataset011_Shape")
    shutil.copy(shape / "labelsTr/breast1.nrrd", shape / "labelsTr/brain2.nrrd")
    with pytest.raises(InputError, match="differs from the image shape") as e:
        discover([shape])
    assert_one_line(e, "brain2.nrrd")

    flat = make_2d(home, tmp_path / "flat")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(flat / "labels/tile2.png")
    with pytest.raises(InputError, match="differs"):
        discover([flat])

    with pytest.raises(InputError, match="unique"):
        discover([home / MR, home / MR])


# ------------------------------------------------------------------ split

def _fake(name: str, n: int, patients: dict[str, str] | None = None) -> DatasetInfo:
    cases = [Case(name, f"c{i:02d}", Path(f"i{i}"), Path(f"l{i}")) for i in range(n)]
    return DatasetInfo(name, Path(name), "CT", {1: "x"}, cases, True, patients or {})


def test_split_by_patient_deterministic_saved(tmp_path):
    groups = {"c00": "p0", "c01": "p0", "c02": "p1", "c03": "p1"}
    data = [_fake("a", 20), _fake("b", 6, groups), _fake("c", 2)]
    split = make_split(data, val_fraction=0.25, seed=3)
    assert split == make_split(data, val_fraction=0.25, seed=3)
    assert split["a"] != make_split(data, val_fraction=0.25, seed=4)["a"]
    for d in data:
        train, val = set(split[d.name]["train"]), set(split[d.name]["val"])
        assert not train & val and train | val == {c.case_id for c in d.cases}
        assert train and val
    assert len(split["a"]["val"]) == 5
    b = split["b"]
    for pair in (("c00", "c01"), ("c02", "c03")):  # one patient never on both sides
        assert {c in b["val"] for c in pair} in ({True}, {False})
    save_split(split, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == split
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]  # no temporary left over


def test_split_single_case_is_recorded(tmp_path):
    with pytest.warns(UserWarning, match="only one patient"):
        split = make_split([_fake("solo", 1)], val_fraction=0.2)
    assert split["solo"]["train"] == ["c00"] and split["solo"]["val"] == []
    assert "only one patient" in split["solo"]["note"]
    with pytest.raises(InputError):
        make_split([_fake("a", 3)], val_fraction=1.0)
    (tmp_path / "bad.json").write_text('{"a": {"train": "c00"}}')
    with pytest.raises(InputError) as e:
        load_split(tmp_path / "bad.json")
    assert_one_line(e, "bad.json")


# ------------------------------------------------------------------ slice samples

@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_samples_match_volume_slice(home, axis):
    (d,) = discover([home / MR])
    split = {d.name: {"train": ["breast1", "brain2"], "val": ["brain1"]}}
    got = slice_samples([d], split, part="train", axis=axis, min_foreground=30)
    empty = below = 0
    expected = []
    for case_id in ("breast1", "brain2"):
        case = next(c for c in d.cases if c.case_id == case_id)
        image = read_image(case.image).array
        label = read_image(case.label).array
        for k in range(label.shape[axis]):
            plane = volume_slice(label, k, axis)
            assert plane.shape == volume_slice(image, k, axis).shape
            n = int((plane == 1).sum())
            empty += n == 0
            below += 0 < n < 30
            if n >= 30:
                expected.append((case_id, k, n))
    assert [(s.case_id, s.slice_index, s.foreground) for s in got.samples] == expected
    counts = {"empty_slices": empty, "below_min_foreground": below, "cases_not_in_split": 0}
    assert got.skipped == {k: v for k, v in counts.items() if v}  # only reasons that occurred
    s = got.samples[0]
    assert (s.axis, s.class_value, s.class_name, s.modality) == (axis, 1, "tumour", "MR")


def test_slice_samples_2d_and_labels_read_once(home, tmp_path, monkeypatch):
    (d,) = discover([make_2d(home, tmp_path / "cells")])
    split = make_split([d], val_fraction=0.25, seed=0)
    reads: list[Path] = []
    real = datasets_mod.read_label
    monkeypatch.setattr(datasets_mod, "read_label", lambda p: reads.append(p) or real(p))
    got = slice_samples([d], split, part="train", min_foreground=10)
    assert sorted(reads) == sorted(c.label for c in d.cases if c.case_id in split[d.name]["train"])
    assert len(got.samples) == 3 and all(s.slice_index is None for s in got.samples)
    for s in got.samples:
        assert s.foreground == int((read_image(s.label).array == 3).sum())
        assert (s.class_value, s.class_name) == (3, "class_3")
    with pytest.raises(InputError, match="not found"):
        slice_samples([d], {d.name: {"train": ["ghost"], "val": []}})
    with pytest.raises(InputError, match="no entry"):
        slice_samples([d], {})


def test_high_min_foreground_counts_everything_dropped(home):
    (d,) = discover([home / CT])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = make_split([d], val_fraction=0.0)
    got = slice_samples([d], split, min_foreground=10**9)
    assert got.samples == []
    total = sum(read_image(c.label).shape[2] for c in d.cases)
    assert got.skipped["empty_slices"] + got.skipped["below_min_foreground"] == total


def test_instance_labels_give_one_sample_per_instance(home, tmp_path):
    """"instance_labels": true -> each nucleus of the real instance map is its own sample."""
    root = tmp_path / "nuclei_instances"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    shutil.copy(home / "nuclei/images/nuclei_000.png", root / "images")
    shutil.copy(home / "nuclei/instances/nuclei_000.png", root / "labels")
    meta = {"channel_names": {"0": "fluorescence microscopy"},
            "labels": {"background": 0, "nuclei": 1}, "instance_labels": True}
    (root / "dataset.json").write_text(json.dumps(meta))
    (d,) = discover([root])
    assert d.instance_labels and d.labels == {1: "nuclei"}
    split = {d.name: {"train": ["nuclei_000"], "val": []}}
    got = slice_samples([d], split, min_foreground=30)
    inst = np.asarray(Image.open(home / "nuclei/instances/nuclei_000.png"))
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    assert [s.class_value for s in got.samples] == ids[counts >= 30].tolist()
    assert {s.class_name for s in got.samples} == {"nuclei"}
    assert [s.foreground for s in got.samples] == counts[counts >= 30].tolist()
    assert got.skipped["below_min_foreground"] == int((counts < 30).sum())
    # a text prompt names the class: its target is every nucleus, also those too small to be
    # samples and those of samples left out (e.g. a validation cap of one sample per class)
    from segmote.data.datasets import class_mask
    one = got.samples[0]
    assert one.instance and np.array_equal(class_mask(inst, one), inst > 0)
    assert not np.array_equal(inst == one.class_value, inst > 0)

    meta["labels"] = {"background": 0, "nuclei": 1, "debris": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as e:
        discover([root])
    assert_one_line(e, "instance_labels")
    meta["instance_labels"] = "yes"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as e:
        discover([root])
    assert_one_line(e, "instance_labels")
