"""segmote.outputs: output paths checked before work, written all together or not at all,
stale temporary files of our naming cleaned (issue 21, cases 1, 11, 12)."""

from __future__ import annotations

import os
import time

import pytest

from segmote.errors import InputError
from segmote.outputs import STALE_AFTER_S, check_outputs, clean_stale_temps, written_together


def test_written_together_commits_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.json"
    b.write_text("old")
    with pytest.raises(OSError):
        with written_together([a, b]) as (ta, tb):
            ta.write_text("new a")
            raise OSError(28, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"] and b.read_text() == "old"
    with written_together([a, b]) as (ta, tb):
        ta.write_text("A")
        tb.write_text("B")
    assert (a.read_text(), b.read_text()) == ("A", "B")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.json"]


def test_check_outputs_refuses_before_any_work(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"png")
    with pytest.raises(InputError, match="the overlay would overwrite the input image"):
        check_outputs({"overlay": image}, {"input image": [image]})
    with pytest.raises(InputError, match="given as both the label map and the overlay"):
        check_outputs({"label map": tmp_path / "m.png", "overlay": tmp_path / "./m.png"}, {})
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_outputs({"label map": image / "m.png"}, {})
    with pytest.raises(InputError, match="the outputs need about"):
        check_outputs({"label map": tmp_path / "m.png"}, {}, need_bytes=1 << 62)
    link = tmp_path / "link.png"
    os.symlink(image, link)
    with pytest.raises(InputError, match="would overwrite"):  # the same file by another name
        check_outputs({"overlay": link}, {"input image": [image]})
    check_outputs({"label map": tmp_path / "new" / "m.png"}, {"input image": [image]})
    assert not (tmp_path / "new").exists()  # checking writes nothing


def test_stale_temps_of_our_naming_are_removed(tmp_path):
    out = tmp_path / "seg.nii.gz"
    stale, fresh = tmp_path / ".seg.nii.gz.k1l2m3n4.nii.gz", tmp_path / ".seg.nii.gz.a9b8c7d6.tmp"
    others = [tmp_path / ".other.png.x1y2z3w4.png", tmp_path / ".seg.nii.gz.swp"]
    for path in (stale, fresh, *others):
        path.write_bytes(b"")  # a SIGKILL during the write leaves 0 bytes
    old = time.time() - STALE_AFTER_S - 5
    for path in (stale, *others):
        os.utime(path, (old, old))
    assert clean_stale_temps(out) == [stale]
    # a live writer's file, another output's, an editor's swap file: all kept
    assert fresh.exists() and all(p.exists() for p in others)


def test_checking_outputs_removes_stale_temps(tmp_path):
    out = tmp_path / "r.csv"
    stale = tmp_path / ".r.csv.x7y8z9ab.tmp"  # what a SIGKILL during the write leaves
    stale.write_bytes(b"")
    old = time.time() - STALE_AFTER_S - 1
    os.utime(stale, (old, old))
    check_outputs({"results CSV": out}, {})
    assert not stale.exists()
