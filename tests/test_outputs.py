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


def _old_pair(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "sub" / "b.json"
    b.parent.mkdir()
    a.write_text("old a")
    b.write_text("old b")
    return a, b


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# whichever rename fails, the first or the second one (after the other succeeded), no output
# changes: written_together renames in order, keeps each old file until all are in place
@pytest.mark.parametrize("failing", [0, 1])
def test_a_folder_in_the_way_leaves_every_output_as_it_was(tmp_path, failing):
    """A folder created at one destination while the outputs were written (another process)."""
    pair = _old_pair(tmp_path)
    bad, other = pair[failing], pair[1 - failing]
    with pytest.raises(InputError, match=rf"{bad.name}: cannot write the output \(Is a direc"
                                         rf"tory\); .*{other.name} left as it was$"):
        with written_together(list(pair)) as tmps:
            for tmp in tmps:
                tmp.write_text("new")
            bad.unlink()
            bad.mkdir()
            (bad / "x").write_text("in the way")
    assert other.read_text() == f"old {other.stem}"
    assert _files(tmp_path) == sorted([str(other.relative_to(tmp_path)),
                                       str((bad / "x").relative_to(tmp_path))])


@pytest.mark.parametrize("failing", [0, 1])
def test_a_read_only_target_leaves_every_output_as_it_was(tmp_path, monkeypatch, failing):
    """One folder turns read-only (a remount) between writing and renaming. Tests run as root
    in CI, which ignores permission bits, so the file system's refusal is raised where
    os.replace meets that folder: the error a read-only mount gives."""
    import errno

    pair = _old_pair(tmp_path)
    bad = pair[failing]
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(bad):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(InputError, match=rf"{bad.name}: cannot write the output \(Read-only "
                                         r"file system\); .* left as it was$"):
        with written_together(list(pair)) as tmps:
            for tmp in tmps:
                tmp.write_text("new")
    assert [p.read_text() for p in pair] == ["old a", "old b"]
    assert _files(tmp_path) == ["a.csv", "sub/b.json"]
    new = tmp_path / "new.csv"  # a destination that did not exist is removed again
    with pytest.raises(InputError, match="left as it was"):
        with written_together([new, bad] if failing else [bad, new]) as tmps:
            for tmp in tmps:
                tmp.write_text("new")
    assert _files(tmp_path) == ["a.csv", "sub/b.json"]


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
