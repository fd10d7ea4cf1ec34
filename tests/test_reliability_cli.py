"""Commands given bad input (issue 21): the exit status, the one line the user reads, and input
files byte-identical afterwards, nothing half-written left behind.

Each case is a row of the "commands" table in docs/reliability.md; the test of a case compares
its row with what the command did (and fails for a case without a row or a row without a case).
Commands run in-process, in a temporary folder, with relative paths, so the lines are stable.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from lung_case import CT, LABEL, PLAIN, TINY, lung_dataset  # noqa: F401 (fixture)
from reliability_doc import UPDATE, read_table, write_table
from segmote.cli.main import main
from segmote.samples import bundled_sample_path

HEADER = ["case", "what the user does", "exit", "what segmote says"]


@dataclass
class Scenario:
    """argv of `segmote`; keep: inputs that must stay byte-identical; absent: paths that must
    not exist afterwards; pick: for a command that succeeds, the start of the line to show."""

    argv: list[str]
    keep: list[Path]
    absent: list[Path] = field(default_factory=list)
    pick: str = ""
    hold: Callable[[], object] | None = None  # started before the command, stopped after


SCENARIOS: dict[str, Callable[..., Scenario]] = {}


def scenario(fn: Callable[..., Scenario]) -> Callable[..., Scenario]:
    SCENARIOS[fn.__name__.replace("_", "-")] = fn
    return fn


# ---------------------------------------------------------------- evaluate

def _label_folders(root: Path, suffix: str = ".nii.gz") -> None:
    """gt/ and pred/ with two cases each of the bundled lung label (pred shifted by a voxel)."""
    gt = np.asarray(nib.load(LABEL).dataobj).astype(np.uint8)
    affine = nib.load(LABEL).affine
    for folder in ("gt", "pred"):
        (root / folder).mkdir()
    for n in (1, 2):
        if suffix == ".png":
            Image.fromarray(gt[:, :, 7] * n).save(root / "gt" / f"case{n}.png")
            Image.fromarray(np.roll(gt[:, :, 7], 1, 0) * n).save(root / "pred" / f"case{n}.png")
        else:
            nib.save(nib.Nifti1Image(gt, affine), root / "gt" / f"case{n}{suffix}")
            nib.save(nib.Nifti1Image(np.roll(gt, 1, 0), affine), root / "pred" / f"case{n}{suffix}")


def _files(*folders: Path) -> list[Path]:
    return [p for f in folders for p in sorted(f.iterdir())]


def _evaluate(out: str, *flags: str, keep: tuple[Path, ...] = (), pick: str = "") -> Scenario:
    """`segmote evaluate -p pred -g gt FLAGS -o OUT` on the folders of `_label_folders`."""
    return Scenario(["evaluate", "-p", "pred", "-g", "gt", *flags, "-o", out],
                    _files(Path("pred"), Path("gt")) + list(keep), pick=pick)


def _labels_json(labels: dict) -> Path:
    Path("dataset.json").write_text(json.dumps({"labels": labels}))
    return Path("dataset.json")


@scenario
def evaluate_out_is_a_ground_truth_file(root: Path) -> Scenario:
    _label_folders(root)
    return _evaluate("gt/case1.nii.gz")


@scenario
def evaluate_out_is_the_labels_json(root: Path) -> Scenario:
    _label_folders(root)
    labels = _labels_json({"background": 0, "tumour": 1})
    return _evaluate("dataset.json", "-l", "dataset.json", keep=(labels,))


@scenario
def evaluate_out_is_an_existing_image(root: Path) -> Scenario:
    _label_folders(root)
    Path("ct.nii.gz").write_bytes(CT.read_bytes())
    return _evaluate("ct.nii.gz", keep=(Path("ct.nii.gz"),))


@scenario
def evaluate_out_is_a_folder(root: Path) -> Scenario:
    _label_folders(root)
    Path("results").mkdir()
    return _evaluate("results")


@scenario
def evaluate_out_cannot_be_written(root: Path) -> Scenario:
    # /proc refuses new files even to root (CI runs as root, for whom chmod means nothing)
    _label_folders(root)
    return _evaluate("/proc/results.csv")


@scenario
def evaluate_labels_not_in_the_labels_json(root: Path) -> Scenario:
    _label_folders(root)
    extra = np.asarray(nib.load(root / "gt" / "case2.nii.gz").dataobj).copy()
    extra[0:3, 0:3, 0:3] = 7  # a label the dataset.json does not name
    nib.save(nib.Nifti1Image(extra, nib.load(LABEL).affine), root / "gt" / "case2.nii.gz")
    _labels_json({"background": 0, "tumour": 1})
    return _evaluate("r.csv", "-l", "dataset.json", "-q", pick="note: labels [7]")


@scenario
def evaluate_class_absent_from_every_case(root: Path) -> Scenario:
    _label_folders(root)
    _labels_json({"0": "background", "1": "tumour", "2": "node"})
    return _evaluate("r.csv", "-l", "dataset.json", "-q", pick="note: 1 class(es)")


@scenario
def evaluate_png_without_spacing(root: Path) -> Scenario:
    _label_folders(root, ".png")
    return _evaluate("r.csv", "-q", pick="note: the files carry no voxel spacing")


# ---------------------------------------------------------------- train

@scenario
def train_out_is_a_file(root: Path, lung_dataset: Path) -> Scenario:
    Path("notes.txt").write_text("my notes\n")
    Path("Dataset001_Lung").symlink_to(lung_dataset)
    return Scenario(["train", "--data", "Dataset001_Lung", "--out", "notes.txt", "-q"],
                    [Path("notes.txt")])


def _hold_lock(run: Path) -> Callable[[], object]:
    """Start a process that holds the run folder's lock as a running `segmote train` does."""
    code = textwrap.dedent(f"""
        import sys, time
        from segmote.training.runlock import run_folder
        with run_folder({str(run)!r}, False, "state.safetensors"):
            print("locked", flush=True)
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start():
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 text=True, env=env)
        assert child.stdout.readline().strip() == "locked"
        return child
    return start


@scenario
def train_run_folder_in_use(root: Path, lung_dataset: Path) -> Scenario:
    Path("Dataset001_Lung").symlink_to(lung_dataset)
    return Scenario(["train", "--data", "Dataset001_Lung", "--out", "run", "-q"], [],
                    hold=_hold_lock(Path("run")))


@scenario
def train_image_with_nan(root: Path, lung_dataset: Path) -> Scenario:
    data = root / "Dataset002_Nan"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for src in sorted((lung_dataset / "imagesTr").iterdir()):
        img = nib.load(src)
        array = np.asarray(img.dataobj).astype(np.float32)
        if src.name.startswith("lung_000"):
            array[10:14, 10:14, 0] = np.nan
        nib.save(nib.Nifti1Image(array, img.affine), data / "imagesTr" / src.name)
    for src in sorted((lung_dataset / "labelsTr").iterdir()):
        (data / "labelsTr" / src.name).write_bytes(src.read_bytes())
    (data / "dataset.json").write_bytes((lung_dataset / "dataset.json").read_bytes())
    Path("tiny.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n"
                                         for k, v in {**TINY, **PLAIN}.items()))
    return Scenario(["train", "--data", "Dataset002_Nan", "--out", "run", "-c", "tiny.yaml",
                     "-q"], _files(data / "imagesTr"), absent=[Path("run")])


# ---------------------------------------------------------------- predict (reading only)

@scenario
def predict_header_declares_two_gigabytes(root: Path) -> Scenario:
    import gzip

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((1024, 1024, 1024))
    header["vox_offset"] = 352
    Path("lie.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 16))
    return Scenario(["predict", "-i", "lie.nii.gz", "-o", "seg.nii.gz", "--box", "1,1,0,5,5,0"],
                    [Path("lie.nii.gz")], absent=[Path("seg.nii.gz")])


@scenario
def predict_volume_without_a_finite_value(root: Path) -> Scenario:
    nib.save(nib.Nifti1Image(np.full((16, 16, 3), np.nan, np.float32), np.eye(4)), "nan.nii.gz")
    return Scenario(["predict", "-i", "nan.nii.gz", "-o", "seg.nii.gz", "--box", "2,2,0,9,9,2"],
                    [Path("nan.nii.gz")], absent=[Path("seg.nii.gz")])


@scenario
def predict_dicom_folder_with_two_series(root: Path) -> Scenario:
    import pydicom
    from pydicom.data import get_testdata_file

    Path("dicom").mkdir()
    for n, (uid, text) in enumerate((("1.2.826.0.1.3680043.8.498.11", "axial"),
                                     ("1.2.826.0.1.3680043.8.498.12", "scout"))):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SeriesDescription = uid, text
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{n}"
        ds.save_as(Path("dicom") / f"im{n}.dcm")
    return Scenario(["predict", "-i", "dicom", "-o", "seg.nii.gz", "--box", "2,2,0,9,9,0"],
                    _files(Path("dicom")), absent=[Path("seg.nii.gz")])


@scenario
def predict_dicom_series_chosen_by_uid(root: Path) -> Scenario:
    sc = predict_dicom_folder_with_two_series(root)
    sc.argv += ["--series", "1.2.826.0.1.3680043.8.498.12", "--adapter", "none", "-q"]
    sc.absent, sc.pick = [], "seg.nii.gz"
    return sc


@scenario
def predict_adapter_weights_with_nan(root: Path) -> Scenario:
    from safetensors.torch import load_file, save_file
    from segmote.adapter import read_adapter_metadata

    source = Path(sys.modules["segmote"].__file__).parent / "assets/adapters/default.safetensors"
    state = load_file(source)
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    meta = {k: v if isinstance(v, str) else json.dumps(v)
            for k, v in read_adapter_metadata(source).items()}
    save_file(state, "nan.safetensors", metadata=meta)
    Image.open(bundled_sample_path("nuclei")).save("cells.png")
    return Scenario(["predict", "-i", "cells.png", "-o", "mask.png", "--box", "10,10,60,60",
                     "--adapter", "nan.safetensors", "-q"],
                    [Path("cells.png"), Path("nan.safetensors")], absent=[Path("mask.png")])


# ---------------------------------------------------------------- predict (before the model)

def _cells(*argv: str, pick: str = "") -> Scenario:
    """`segmote predict -i cells.png ARGV` on the bundled nuclei image."""
    Image.open(bundled_sample_path("nuclei")).save("cells.png")
    return Scenario(["predict", "-i", "cells.png", *argv], [Path("cells.png")],
                    absent=[Path(a) for a in argv if a.endswith(".png") and a != "cells.png"],
                    pick=pick)


BOX = "416,350,446,374"


@scenario
def predict_overlay_is_the_input(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--box", BOX, "--overlay", "cells.png")


@scenario
def predict_attention_is_the_label_map(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--box", BOX, "--attention", "m.png")


@scenario
def predict_overlay_cannot_be_written(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--box", BOX, "--overlay", "/proc/o.png")


@scenario
def predict_point_label_not_0_or_1(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--point", "430,360,0.7")


@scenario
def predict_unknown_class(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--text", "nuclie")


@scenario
def predict_box_outside_the_image(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--box", "600,600,700,700")


@scenario
def predict_inverted_box(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--box", "446,374,416,350")


@scenario
def predict_no_prompt(root: Path) -> Scenario:
    return _cells("-o", "m.png")


@scenario
def predict_routing_without_prompts(root: Path) -> Scenario:
    return _cells("-o", "m.png", "--auto", "--classes", "nuclei", "--routing")


@scenario
def predict_zero_area_box(root: Path) -> Scenario:
    sc = _cells("-o", "m.png", "--box", "416,350,416,374", "-q",
                pick="segmote predict: warning: box")
    sc.absent = []
    return sc


@scenario
def predict_zero_area_box_across_axis_0(root: Path) -> Scenario:
    """Sliced across x, a box is one voxel thick in x by nature; flat in z it has no area
    (the check used to look at x and y whatever the axis)."""
    Path("ct.nii.gz").write_bytes(CT.read_bytes())
    return Scenario(["predict", "-i", "ct.nii.gz", "-o", "m.nii.gz", "--box",
                     "128,83,7,128,162,7", "--axis", "0", "--adapter", "none", "-q"],
                    [Path("ct.nii.gz")], pick="segmote predict: warning: box")


@scenario
def predict_constant_image(root: Path) -> Scenario:
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save("flat.png")
    return Scenario(["predict", "-i", "flat.png", "-o", "m.png", "--box", "8,8,40,40",
                     "--adapter", "none", "-q"], [Path("flat.png")],
                    pick="segmote predict: warning: flat.png")


# ---------------------------------------------------------------- the test

def _command(argv: list[str]) -> str:
    return "`segmote " + " ".join(shlex.quote(a) for a in argv) + "`"


@pytest.mark.parametrize("case", sorted(SCENARIOS))
def test_command_on_bad_input(case, tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)
    make = SCENARIOS[case]
    extra = {n: request.getfixturevalue(n) for n in make.__code__.co_varnames[1:make.__code__
                                                                              .co_argcount]}
    sc = make(tmp_path, **extra)
    before = {p: p.read_bytes() for p in sc.keep}
    held = sc.hold() if sc.hold else None
    try:
        rc = main(sc.argv)
    finally:
        if held is not None:
            held.kill()
            held.wait()
    out, err = capsys.readouterr()
    if held is not None:  # the lock holder's pid changes from run to run
        out, err = out.replace(str(held.pid), "PID"), err.replace(str(held.pid), "PID")
    if rc:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err  # one line, no traceback
        said = lines[0]
    else:
        said = next(ln for ln in (out + err).splitlines() if ln.startswith(sc.pick))
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed"
    for path in sc.absent:
        assert not path.exists(), f"{path} left behind"
    row = [case, _command(sc.argv), str(rc), said]
    if UPDATE:
        rows = {r[0]: r for r in read_table("commands") if r[0] in SCENARIOS}
        write_table("commands", HEADER, sorted({**rows, case: row}.values()))
    assert row in read_table("commands"), f"docs/reliability.md lacks the row {row}"


def test_every_documented_case_is_tested():
    assert sorted(r[0] for r in read_table("commands")) == sorted(SCENARIOS)
