"""3-D protocols of `segmote evaluate-model` (`segmote.evaluation.volume_protocols`) on a real
MR tumour (pyradiomics breast1) with the real LiteMedSAM: per-object 3-D Dice / NSD / HD95 rows,
seeded prompts (identical reruns), the 3-D box inside the volume, a one-line error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from segmote.cli.main import main
from segmote.evaluation.volume_protocols import jittered_box3d, key_slice

MR = "pyradiomics/Dataset002_PyradiomicsMR"
PROTOCOLS = ["box3d", "box3d_every_slice", "key_box", "key_point"]


def test_jittered_box3d_and_key_slice():
    gt = np.zeros((20, 30, 12), bool)
    gt[5:10, 8:20, 3:9] = True
    gt[6:8, 10:12, 5] = True
    gt[4, 8:20, 6] = True  # slice 6 has the most foreground
    rng = np.random.default_rng(0)
    for _ in range(20):
        (x0, y0, x1, y1), (k0, k1) = jittered_box3d(gt, rng, 0.1)
        # slice pixels: x = i (columns), y = j (rows); each side within 1 voxel of the truth
        assert abs(x0 - 4) <= 1 and abs(x1 - 9) <= 1 and abs(y0 - 8) <= 1 and abs(y1 - 19) <= 1
        assert abs(k0 - 3) <= 1 and abs(k1 - 8) <= 1 and 0 <= k0 <= k1 <= 11
    assert key_slice(gt) == 6


def test_evaluate_model_3d_protocols(samples_home, tmp_path, capsys):
    data = Path(samples_home) / "samples" / MR
    split = tmp_path / "split.json"
    split.write_text(json.dumps({data.name: {"train": ["brain1", "brain2"],
                                             "val": ["breast1"]}}))
    args = ["evaluate-model", "--data", str(data), "--split", str(split), "--model", "base",
            "--prompt", *PROTOCOLS, "--cache-dir", str(tmp_path / "cache"),
            "-o", str(tmp_path / "r1")]
    assert main(args) == 0
    assert "prompt box3d " in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "r1.csv").open()))
    assert [r["prompt"] for r in rows] == PROTOCOLS  # one object, one row per protocol
    for r in rows:
        assert r["case"] == "breast1" and r["slice"] == "" and r["class"] == "tumour"
        assert 0 <= float(r["dice"]) <= 1 and 0 <= float(r["nsd"]) <= 1
        assert float(r["hd95"]) >= 0
    by = {r["prompt"]: float(r["dice"]) for r in rows}
    assert by["box3d"] > 0.5 and by["box3d_every_slice"] > 0.5  # a box finds this tumour
    summary = json.loads((tmp_path / "r1.json").read_text())
    entry = summary["summary"]["base"]["box3d"]
    assert entry["datasets"][data.name]["n"] == 1 and "mean_hd95" in entry
    assert summary["info"]["n_objects_3d"] == 1
    # seeded prompts, cached slices: a rerun gives the same file
    assert main(args[:-1] + [str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2.csv").read_text() == (tmp_path / "r1.csv").read_text()
    capsys.readouterr()


def test_3d_protocol_without_volumes_fails_in_one_line(samples_home, capsys):
    nuclei = Path(samples_home) / "samples" / "nuclei"
    assert main(["evaluate-model", "--data", str(nuclei), "--model", "base", "--prompt",
                 "box3d", "--part", "all"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--prompt box3d" in errors[0] and "3-D" in errors[0]
