"""Atomic writes: the destination appears whole or not at all, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from segmote.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_written_whole_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "sub" / "a.json", "{}\n")
        atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "a.json").read_text() == "{}\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    # mkstemp makes 0600 files; shared adapters and reports must be readable by the group
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "sub"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "curves.png"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest, ".png") as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]
