"""`segmote predict -i IN_DIR -o OUT_DIR` end to end on real images with the real model: prompts
per case, a failed case among good ones, two torchrun ranks (gloo on CPU) sharing four cases;
and named labels through the command line (DICOM-SEG, ITK-SNAP file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image
from scipy import ndimage

from segmote.cli.main import main
from segmote.io.labels import read_itksnap_labels
from segmote.samples import bundled_sample_path
from test_label_names import ct_series

NUCLEI = bundled_sample_path("nuclei")
INSTANCES = NUCLEI.parent / "nuclei_instances.png"
LUNG_BOX = "83,93,6,173,162,7"  # the bundled CT's tumour box on two slices (fast)


def nuclei_cases(folder: Path, n: int = 4) -> tuple[dict, dict]:
    """Four 256 x 256 quadrants of the real nuclei image as CASE_0000.png, a box around the
    largest whole nucleus in each (ground-truth box + 1 px); returns the prompts and masks."""
    folder.mkdir()
    image, inst = np.array(Image.open(NUCLEI)), np.array(Image.open(INSTANCES))
    prompts, masks = {}, {}
    for q in range(n):
        r, c = 256 * (q // 2), 256 * (q % 2)
        crop, lab = image[r:r + 256, c:c + 256], inst[r:r + 256, c:c + 256]
        whole = [v for v in np.unique(lab) if v and not _touches_edge(lab == v)]
        value = max(whole, key=lambda v: (lab == v).sum())
        rows, cols = ndimage.find_objects((lab == value).astype(int))[0]
        box = [max(cols.start - 1, 0), max(rows.start - 1, 0), min(cols.stop, 255),
               min(rows.stop, 255)]  # stop is one past the last pixel: + 1 px padding
        box = [int(v) for v in box]
        name = f"cells{q}"
        Image.fromarray(crop).save(folder / f"{name}_0000.png")
        prompts[name], masks[name] = {"boxes": [box]}, lab == value
    return prompts, masks


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_folder_with_prompts_file_and_a_failed_case(tmp_path, capsys):
    prompts, masks = nuclei_cases(tmp_path / "in", n=2)
    (tmp_path / "in" / "broken_0000.png").write_bytes(b"\x89PNG truncated")
    prompts["broken"] = {"boxes": [[1, 1, 9, 9]]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--prompts",
               str(tmp_path / "prompts.json"), "--adapter", "none"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells0.png", "cells1.png"]
    assert out.split() == [str(tmp_path / "out" / f"cells{q}.png") for q in range(2)]
    assert "2 of 3 cases written; 1 failed:" in err and "broken_0000.png" in err
    assert "Traceback" not in err
    for name, mask in masks.items():
        pred = np.array(Image.open(tmp_path / "out" / f"{name}.png")) > 0
        assert dice(pred, mask) > 0.6, name


def test_folder_loads_the_model_once_and_matches_single_file_runs(tmp_path, capsys,
                                                                   monkeypatch):
    """Three cases (two boxed, one automatic) with the shipped adapter: one model load for the
    whole folder, and every output byte-identical to `segmote predict` on that file alone."""
    import segmote.predict.pipeline as pipeline

    loads = []
    real = pipeline.load_model
    monkeypatch.setattr(pipeline, "load_model",
                        lambda *a, **kw: loads.append(kw) or real(*a, **kw))
    prompts, _ = nuclei_cases(tmp_path / "in", n=3)
    del prompts["cells2"]  # segmented with --auto
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    rc = main(["predict", "-q", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "--prompts", str(tmp_path / "prompts.json"), "--auto"])
    assert rc == 0 and len(loads) == 1, capsys.readouterr().err
    for q in range(3):
        name = f"cells{q}"
        flags = ["--box", ",".join(map(str, prompts[name]["boxes"][0]))] if name in prompts \
            else ["--auto"]
        rc = main(["predict", "-q", "-i", str(tmp_path / "in" / f"{name}_0000.png"),
                   "-o", str(tmp_path / f"{name}.png"), *flags])
        assert rc == 0
        assert (tmp_path / f"{name}.png").read_bytes() == \
            (tmp_path / "out" / f"{name}.png").read_bytes(), name
    assert len(loads) == 4  # a single-file run still loads its own


def test_folder_needs_prompts_for_every_case_or_auto(tmp_path, capsys):
    prompts, _ = nuclei_cases(tmp_path / "in", n=2)
    del prompts["cells1"]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "--prompts", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "cells1" in err and "--auto" in err and err.count("\n") == 1
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--auto",
               "--output-ending", ".jpg"])
    err = capsys.readouterr().err
    assert rc == 1 and "--output-ending '.jpg'" in err and err.count("\n") == 1
    rc = main(["predict", "-i", str(NUCLEI), "-o", str(tmp_path / "out"), "--box", "1,1,9,9",
               "--prompts", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "--prompts goes with a folder of cases" in err
    assert not (tmp_path / "out").exists()


def test_torchrun_two_ranks_write_every_case_exactly_once(tmp_path):
    prompts, masks = nuclei_cases(tmp_path / "in")
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "segmote.cli.main", "predict", "-q", "-i", str(tmp_path / "in"),
           "-o", str(tmp_path / "out"), "--prompts", str(tmp_path / "prompts.json"),
           "--adapter", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every rank prints the path of each file it wrote, right after writing it
    written = proc.stdout.split()
    expected = sorted(str(tmp_path / "out" / f"{name}.png") for name in masks)
    assert sorted(written) == expected  # four cases, each written once, by one rank
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(p).name for p in expected]
    for name, mask in masks.items():
        assert dice(np.array(Image.open(tmp_path / "out" / f"{name}.png")) > 0, mask) > 0.6


def test_dicom_series_to_dicom_seg_with_label_names(tmp_path, capsys):
    _, files = ct_series(tmp_path / "series")
    rc = main(["predict", "-q", "-i", str(tmp_path / "series"), "-o", str(tmp_path / "seg.dcm"),
               "--box", LUNG_BOX, "--label", "2", "--label-name", "2=lung tumour",
               "--adapter", "none"])
    assert rc == 0, capsys.readouterr().err
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung tumour"]
    series = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    assert frames[6:8].any() and not frames[:6].any() and not frames[8:].any()


def test_text_names_the_label_beside_a_nifti(tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    rc = main(["predict", "-q", "-i", str(bundled_sample_path("lung2_ct_crop")), "-o", str(out),
               "--box", LUNG_BOX, "--text", "tumour"])
    assert rc == 0, capsys.readouterr().err
    assert read_itksnap_labels((tmp_path / "seg_labels.txt").read_text()) == {1: "tumour"}


def test_bad_label_name_flag(tmp_path, capsys):
    for flag in ("tumour", "x=tumour", "0=background"):
        rc = main(["predict", "-i", str(NUCLEI), "-o", str(tmp_path / "m.png"),
                   "--box", "1,1,9,9", "--label-name", flag])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "error: --label-name " in err, err
    assert not (tmp_path / "m.png").exists()
