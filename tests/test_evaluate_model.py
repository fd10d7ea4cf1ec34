"""`segmote evaluate-model` on real data with the real LiteMedSAM: base vs adapters in one
table, reproducible to the digit, metadata for reproduction, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segmote.cli.main import main

MR = "pyradiomics/Dataset002_PyradiomicsMR"


@pytest.fixture
def mr_split(samples_home, tmp_path) -> tuple[Path, Path]:
    data = Path(samples_home) / "samples" / MR
    split = tmp_path / "split.json"
    split.write_text(json.dumps({data.name: {"train": ["brain1", "breast1"],
                                             "val": ["brain2"]}}))
    return data, split


def test_base_vs_fresh_adapter_table_and_files(mr_split, tmp_path, capsys):
    data, split = mr_split
    args = ["evaluate-model", "--data", str(data), "--split", str(split), "--model", "base",
            "new", "--prompt", "box", "point", "-o", str(tmp_path / "r1")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prompt box" in out and "prompt point" in out and "Dataset002_PyradiomicsMR" in out
    res = json.loads((tmp_path / "r1.json").read_text())
    box = res["summary"]
    # data.md's reference for brain2 with tight boxes: 0.537 (n = 3 slices)
    assert box["base"]["box"]["datasets"]["Dataset002_PyradiomicsMR"]["n"] == 3
    assert box["base"]["box"]["mean"] == pytest.approx(0.537, abs=0.01)
    # a fresh adapter reproduces the base model
    for prompt in ("box", "point"):
        assert box["new"][prompt]["mean"] == pytest.approx(box["base"][prompt]["mean"],
                                                           abs=1e-6)
    info = res["info"]
    assert info["split"]["Dataset002_PyradiomicsMR"]["val"] == ["brain2"]
    assert len(info["backbone_sha256"]) == 64 and info["segmote_version"]
    assert [p["prompt"] for p in info["protocols"]] == ["box", "point"]
    rows = (tmp_path / "r1.csv").read_text().splitlines()
    assert rows[0] == "model,prompt,dataset,case,slice,class,dice,nsd,hd95"  # nsd, hd95: 3-D
    assert len(rows) == 1 + 2 * 2 * 3  # models x prompts x samples

    # same inputs and seed -> identical numbers
    assert main(args[:-1] + [str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2.csv").read_text() == (tmp_path / "r1.csv").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("extra, needle", [
    (["--prompt", "text"], "text"),
    (["--prompt", "lasso"], "lasso"),
    (["--model", "missing.safetensors"], "missing.safetensors"),
    (["--model", "base", "base"], "twice"),
])
def test_bad_requests_fail_with_one_line(mr_split, tmp_path, capsys, extra, needle):
    data, split = mr_split
    rc = main(["evaluate-model", "--data", str(data), "--split", str(split),
               "-o", str(tmp_path / "r")] + extra)
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("r.*"))  # nothing half-written
