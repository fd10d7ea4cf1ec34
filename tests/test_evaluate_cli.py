"""`segmote evaluate` end to end on tiny NIfTI / PNG folders, and its one-line errors."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segmote.cli.main import main
from segmote.errors import InputError
from segmote.evaluation.evaluate import case_name, evaluate_folders, load_labels
from segmote.evaluation.metrics import case_metrics, image_diagonal_mm

SPACING = (0.8, 0.8, 2.5)
SHAPE = (24, 20, 8)


def _affine(spacing=SPACING, origin=(-10.0, 5.0, 2.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), _affine() if affine is None else affine), path)


def _gt_and_pred(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of boxes; the prediction is shifted (by 2.5 mm in z for odd seeds) and misses
    a corner."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, np.uint8)
    x, y = rng.integers(2, 6, size=2)
    gt[x : x + 8, y : y + 6, 2:6] = 1
    gt[14:20, 10:16, 1:5] = 2
    pred = np.roll(gt, (1, 0, seed % 2), axis=(0, 1, 2))
    pred[14:16, 10:12, 1:3] = 0
    return gt, pred


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path, dict]:
    """gt/CASE.nii.gz and pred/CASE_seg.nii.gz for three cases; returns the arrays too."""
    arrays = {}
    for i, case in enumerate(["case_001", "case_002", "case_003"]):
        gt, pred = _gt_and_pred(i)
        _save(tmp_path / "gt" / f"{case}.nii.gz", gt)
        _save(tmp_path / "pred" / f"{case}_seg.nii.gz", pred)
        arrays[case] = (gt, pred)
    (tmp_path / "pred" / "plans.json").write_text("{}")  # nnU-Net leaves these; must be ignored
    return tmp_path / "pred", tmp_path / "gt", arrays


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_end_to_end(folders, tmp_path, capsys):
    pred_dir, gt_dir, arrays = folders
    out = tmp_path / "out" / "results.csv"
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "-o", str(out)]) == 0
    rows = _read_csv(out)
    assert list(rows[0]) == [
        "case", "class_id", "class", "dice", "nsd", "hd95", "empty", "n_gt_voxels", "n_pred_voxels"
    ]
    assert [(r["case"], r["class"]) for r in rows] == [
        (c, k) for c in ["case_001", "case_002", "case_003"] for k in ("1", "2")
    ]
    for row in rows:  # the CSV holds exactly what the metric core computes on the arrays
        gt, pred = arrays[row["case"]]
        (want,) = [
            r for r in case_metrics(pred, gt, {1: "1", 2: "2"}, SPACING, 2.0)
            if r["class_id"] == int(row["class_id"])
        ]
        for key in ("dice", "nsd", "hd95"):
            # NIfTI stores spacing as float32, so 0.8 mm is read back as 0.800000011920929.
            assert float(row[key]) == pytest.approx(want[key], rel=1e-6)
        assert int(row["n_gt_voxels"]) == want["n_gt_voxels"] and row["empty"] == "none"
    summary = json.loads((tmp_path / "out" / "results.summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["nsd_tolerance_mm"] == 2.0
    dices = [float(r["dice"]) for r in rows if r["class"] == "1"]
    assert summary["classes"]["1"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert summary["classes"]["1"]["dice"]["median"] == pytest.approx(np.median(dices))
    assert summary["overall_mean"]["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    assert "hd95" in capsys.readouterr().out  # the compact table
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_subprocess(folders, tmp_path):
    pred_dir, gt_dir, _ = folders
    out = tmp_path / "r.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "segmote.cli.main", "evaluate", "-p", str(pred_dir), "-g", str(gt_dir),
         "-o", str(out), "--nsd-mm", "1.5", "-q"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(_read_csv(out)) == 6
    assert json.loads(out.with_name("r.summary.json").read_text())["nsd_tolerance_mm"] == 1.5


def test_bad_input_subprocess_one_line_no_traceback(folders, tmp_path):
    pred_dir, gt_dir, _ = folders
    _save(gt_dir / "case_004.nii.gz", np.ones(SHAPE))  # no prediction for it
    out = tmp_path / "r.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "segmote.cli.main", "evaluate", "-p", str(pred_dir), "-g", str(gt_dir),
         "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "case_004" in lines[0] and "--allow-missing" in lines[0]
    assert not out.exists() and not out.with_name("r.summary.json").exists()


def test_allow_missing_counts_empty_and_caps_hd95(folders, tmp_path):
    pred_dir, gt_dir, _ = folders
    gt = np.zeros(SHAPE, np.uint8)
    gt[2:5, 2:5, 2:4] = 1
    _save(gt_dir / "case_004.nii.gz", gt)
    out = tmp_path / "r.csv"
    summary = evaluate_folders(pred_dir, gt_dir, labels=None, out_csv=out, allow_missing=True)
    rows = [r for r in _read_csv(out) if r["case"] == "case_004"]
    assert [(r["class"], r["empty"], r["dice"], r["hd95"]) for r in rows] == [
        ("1", "pred", "0.0", "inf"),  # raw inf in the CSV
        ("2", "both", "1.0", "0.0"),  # class 2 absent from this case's gt and pred
    ]
    assert summary.missing == ["case_004"]
    assert summary.classes["1"]["empty"] == {"none": 3, "both": 0, "pred": 1, "gt": 0}
    others = [float(r["hd95"]) for r in _read_csv(out) if r["class"] == "1" and r["case"] != "case_004"]
    capped = others + [image_diagonal_mm(SHAPE, SPACING)]
    assert summary.classes["1"]["hd95"]["mean"] == pytest.approx(np.mean(capped))
    assert math.isfinite(json.loads(out.with_name("r.summary.json").read_text())["overall_mean"]["hd95"])


@pytest.mark.parametrize(
    "change, message",
    [
        ("spacing", "spacing (0.8, 0.8, 2.5) vs (0.8, 0.8, 3)"),
        ("origin", "affine differs by up to 1"),
        ("shape", "shape"),
    ],
)
def test_geometry_mismatch(folders, tmp_path, capsys, change, message):
    pred_dir, gt_dir, arrays = folders
    gt, pred = arrays["case_002"]
    if change == "spacing":
        _save(pred_dir / "case_002_seg.nii.gz", pred, _affine((0.8, 0.8, 2.5)))
        _save(gt_dir / "case_002.nii.gz", gt, _affine((0.8, 0.8, 3.0)))
    elif change == "origin":
        _save(pred_dir / "case_002_seg.nii.gz", pred, _affine(origin=(-9.0, 5.0, 2.0)))
    else:
        _save(pred_dir / "case_002_seg.nii.gz", pred[:, :, :-1])
    with pytest.raises(InputError, match="case_002_seg.nii.gz and ground truth .*case_002.nii.gz") as err:
        evaluate_folders(pred_dir, gt_dir, out_csv=tmp_path / "r.csv")
    assert message in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "cli.csv"
    assert main(["evaluate", "-p", str(pred_dir), "-g", str(gt_dir), "-o", str(out)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "labels_json",
    [
        {"labels": {"background": 0, "liver": 1, "tumour": 2}},  # nnU-Net v2
        {"labels": {"0": "background", "1": "liver", "2": "tumour"}},  # MSD
    ],
)
def test_labels_from_dataset_json(folders, tmp_path, labels_json):
    pred_dir, gt_dir, _ = folders
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(labels_json))
    assert load_labels(path) == {1: "liver", 2: "tumour"}
    out = tmp_path / "r.csv"
    assert main(["evaluate", "-p", str(pred_dir), "-g", str(gt_dir), "-o", str(out), "-l", str(path), "-q"]) == 0
    assert {r["class"] for r in _read_csv(out)} == {"liver", "tumour"}


def test_bad_labels_file(tmp_path, folders, capsys):
    pred_dir, gt_dir, _ = folders
    bad = tmp_path / "dataset.json"
    bad.write_text('{"labels": {"liver": [1, 2]}}')
    assert main(["evaluate", "-p", str(pred_dir), "-g", str(gt_dir), "-o", str(tmp_path / "r.csv"),
                 "-l", str(bad)]) == 1
    assert "region-based" in capsys.readouterr().err
    with pytest.raises(InputError, match="not found"):
        load_labels(tmp_path / "nope.json")


def test_labels_inferred_from_all_gt_and_pred_only_labels_ignored(tmp_path):
    """A class in one case's gt gets rows in every case; a label only predicted is reported."""
    gt_a, gt_b = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    gt_a[2:6, 2:6, 2:4] = 1
    gt_b[2:6, 2:6, 2:4] = 3
    pred_b = gt_b.copy()
    pred_b[10:12, 10:12, 5] = 1  # class 1 predicted where the gt has none
    pred_b[20, 2, 2] = 9  # a label no gt has
    for name, gt, pred in (("a", gt_a, gt_a), ("b", gt_b, pred_b)):
        _save(tmp_path / "gt" / f"{name}.nii.gz", gt)
        _save(tmp_path / "pred" / f"{name}.nii.gz", pred)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", out_csv=tmp_path / "r.csv")
    rows = {(r["case"], r["class"]): r for r in _read_csv(tmp_path / "r.csv")}
    assert sorted(rows) == [("a", "1"), ("a", "3"), ("b", "1"), ("b", "3")]
    assert rows["a", "3"]["empty"] == "both" and rows["b", "1"]["empty"] == "gt"
    assert rows["b", "1"]["n_pred_voxels"] == "4"
    assert summary.ignored_pred_labels == [9]


def test_png_pairs(tmp_path):
    """2-D label maps: a 2x2 square vs a 2x3 rectangle in a PNG pair, Dice 0.8."""
    from PIL import Image

    gt, pred = np.zeros((6, 7), np.uint8), np.zeros((6, 7), np.uint8)
    gt[1:3, 1:3] = 255
    pred[1:3, 1:4] = 255
    for folder, array in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "img01.png")
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", out_csv=tmp_path / "r.csv")
    assert list(summary.classes) == ["255"]
    assert summary.classes["255"]["dice"]["mean"] == pytest.approx(0.8)
    assert summary.classes["255"]["hd95"]["mean"] > 0


def test_case_names():
    assert case_name(Path("la_003.nii.gz")) == "la_003"
    assert case_name(Path("la_003_seg.nrrd")) == "la_003"
    assert case_name(Path("la_003.seg.nrrd")) == "la_003"
    assert case_name(Path("IMG.PNG")) == "IMG"
    assert case_name(Path("dataset.json")) is None


def test_missing_folder_and_duplicates(tmp_path, folders):
    pred_dir, gt_dir, arrays = folders
    with pytest.raises(InputError, match="not a folder"):
        evaluate_folders(tmp_path / "nope", gt_dir, out_csv=tmp_path / "r.csv")
    _save(pred_dir / "case_001.nii", arrays["case_001"][1])
    with pytest.raises(InputError, match="two files for case 'case_001'"):
        evaluate_folders(pred_dir, gt_dir, out_csv=tmp_path / "r.csv")
    assert not os.path.exists(tmp_path / "r.csv")


def test_class_absent_everywhere_is_kept_out_of_the_mean(folders, tmp_path):
    """Issue 21, case 9: a named class in no file scored Dice 1 and lifted the mean."""
    pred_dir, gt_dir, _ = folders
    labels = {1: "a", 2: "b", 3: "absent"}
    plain = evaluate_folders(pred_dir, gt_dir, labels={1: "a", 2: "b"}, out_csv=tmp_path / "p.csv")
    apart = evaluate_folders(pred_dir, gt_dir, labels=labels, out_csv=tmp_path / "r.csv")
    assert apart.absent_classes == ["absent"] and "absent" not in apart.classes
    assert apart.overall == plain.overall
    ones = evaluate_folders(pred_dir, gt_dir, labels=labels, out_csv=tmp_path / "o.csv",
                            empty_as_one=True)
    assert ones.classes["absent"]["dice"]["mean"] == 1.0
    assert ones.overall["dice"] == pytest.approx((2 * plain.overall["dice"] + 1) / 3)
    saved = json.loads((tmp_path / "r.summary.json").read_text())
    assert saved["classes_absent_from_every_case"] == ["absent"]
    assert "kept out" in saved["absent_classes_in_mean"]


def test_png_distances_are_pixels(tmp_path):
    from PIL import Image

    gt = np.zeros((20, 20), np.uint8)
    gt[5:12, 5:12] = 1
    for folder, array in (("gt", gt), ("pred", np.roll(gt, 2, 0))):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "c.png")
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "gt", out_csv=tmp_path / "r.csv")
    assert summary.unit == "px" and summary.to_dict()["distance_unit"] == "px"
    assert "hd95 px" in summary.format_table() and "nsd@2px" in summary.format_table()
    assert "mm" not in summary.format_table()
