"""Damaged files of every readable format end in one InputError line, with bounded memory.

The cases and the expected lines are the rows of docs/reliability.md (table "bad-files").
A fresh child process reads them all, so its peak resident memory is the readers' own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bad_files import DEFECTS, FORMATS, make_bad_files
from reliability_doc import UPDATE, read_table, write_table
from segmote.errors import InputError
from segmote.io import read_image
from segmote.samples import bundled_sample_path

PEAK_RSS_MB = 500


def test_bad_files_of_every_format(tmp_path):
    files = make_bad_files(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    before = {p: p.read_bytes() for p in files.values()}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("bad_files.py")),
                          *map(str, files.values())], capture_output=True, text=True,
                         timeout=300, env=env, check=True).stdout.splitlines()
    results = [json.loads(line) for line in out]
    peak = results.pop()["peak_rss_mb"]
    observed = {}
    for (fmt, defect), path in files.items():
        got = next(r for r in results if r["path"] == str(path))
        assert got["outcome"] == "InputError", got
        assert str(path) in got["message"] and "\n" not in got["message"], got
        observed[(fmt, defect)] = got["message"].replace(str(path), "FILE")
        assert path.read_bytes() == before[path]
    rows = [[f"`{fmt}`", defect, observed[(fmt, defect)]]
            for fmt, _ in FORMATS for defect in DEFECTS]
    if UPDATE:
        write_table("bad-files", ["format", "defect", "segmote says (exit 1)"], rows)
    assert {(r[0], r[1]) for r in read_table("bad-files")} == {(r[0], r[1]) for r in rows}
    for row in read_table("bad-files"):
        assert row == next(r for r in rows if r[:2] == row[:2]), row
    assert peak < PEAK_RSS_MB, f"reading the bad files peaked at {peak:.0f} MB"


def test_memory_budget_refuses_before_reading(tmp_path):
    ct = bundled_sample_path("lung2_ct_crop")
    nbytes = read_image(ct).array.nbytes
    assert read_image(ct, max_bytes=nbytes).array.nbytes == nbytes  # exactly at the budget
    with pytest.raises(InputError, match="exceeds the memory budget") as err:
        read_image(ct, max_bytes=nbytes - 1)
    assert str(ct) in str(err.value)
    np.save(tmp_path / "v.npy", np.zeros((64, 64, 8), np.int16))
    with pytest.raises(InputError, match="64.0 KiB exceeds the memory budget of 1.0 KiB"):
        read_image(tmp_path / "v.npy", max_bytes=1024)
