"""The output files of one command: checked before any work, written together at the end.

`check_outputs` refuses, before anything is read or computed, an output that would replace an
input or another output, an existing file of another kind, a folder, or a place that cannot be
written or lacks the space. `written_together` gives every output a temporary file beside it
(`segmote.atomic.temp_beside`) and renames them all only when the whole block succeeded, so a
failed command leaves none of its outputs behind. `clean_stale_temps` removes temporary files
of that naming left by a killed run (SIGKILL skips every cleanup).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from segmote.atomic import move_into_place, temp_beside
from segmote.errors import InputError

STALE_AFTER_S = 600  # a temp file untouched this long belongs to no live writer


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def check_outputs(outputs: Mapping[str, Path], inputs: Mapping[str, Sequence[Path]],
                  endings: Mapping[str, Sequence[str]] | None = None,
                  need_bytes: int = 0) -> None:
    """InputError (one line naming the file) unless every output can be written safely; then
    removes the stale temporary files a killed run left next to each output (`clean_stale_temps`).

    outputs: role ("label map", "overlay PNG", ...) -> path the command will write.
    inputs: role ("input image", "ground-truth folder", ...) -> files or folders it reads.
    endings: role -> the endings that output may have (lower case, ".nii.gz" as one).
    need_bytes: estimate of the bytes all outputs take; checked against the free space.
    """
    from segmote.io.image import split_ext

    items = [(role, Path(p)) for role, p in outputs.items()]
    for i, (role, path) in enumerate(items):
        for other_role, other in items[:i]:
            if _same(path, other):
                raise InputError(f"{path}: given as both the {other_role} and the {role}")
        for in_role, in_paths in inputs.items():
            for source in in_paths:
                if _same(path, Path(source)):
                    raise InputError(f"{path}: the {role} would overwrite the {in_role} "
                                     f"{source}")
        if path.is_dir():
            raise InputError(f"{path}: is a folder; the {role} must be a file path")
        allowed = (endings or {}).get(role)
        if allowed and split_ext(path)[1] not in allowed:
            state = "exists and is" if path.exists() else "would be"
            raise InputError(f"{path}: {state} not a {'/'.join(allowed)} file; the {role} "
                             f"must end in {' or '.join(allowed)}")
        folder = _existing_ancestor(path)
        if not folder.is_dir():
            raise InputError(f"{path}: {folder} is a file, not a folder that can hold the {role}")
        _probe(path, role, folder)
    for _, path in items:
        clean_stale_temps(path)
    if need_bytes and items:
        folder = _existing_ancestor(items[0][1])
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise InputError(f"{items[0][1]}: only {free >> 20} MiB free in {folder}, the "
                             f"outputs need about {need_bytes >> 20} MiB")


def _probe(path: Path, role: str, folder: Path) -> None:
    """Create and remove a file in `folder`: the one test of writability that also holds for
    root, read-only mounts and pseudo file systems (os.access answers yes to root)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".segmote-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"{path}: cannot write the {role} in {folder} "
                         f"({err.strerror or type(err).__name__})") from None


@contextlib.contextmanager
def written_together(paths: Sequence[Path], suffixes: Sequence[str] | None = None,
                     in_place: Sequence[Path] = ()) -> Iterator[list[Path]]:
    """Yield one temporary path per destination; all are renamed onto their destinations when
    the block ends normally, none when it raises (the temporary files are removed then).

    The renames are one after the other, so one may fail after another succeeded (a folder
    made read-only meanwhile, a folder created at a destination): then the destinations already
    replaced get their old file back (kept as a hard link until the end) or are removed if
    they were new, and InputError names the file that failed. Only when that roll-back fails
    too does the error say which files now hold the new outputs.
    suffixes: each temporary file's ending, for writers that choose a format by it.
    in_place: files the block writes at their destination itself (atomically, with a writer
        that names files after them: a label map and its label-names file); if the block
        raises or a rename fails, they get their old file back, or are removed if they were new.
    """
    paths = [Path(p) for p in paths]
    ends = suffixes or [".tmp"] * len(paths)
    tmps: list[Path] = []
    own = [Path(p) for p in in_place]
    kept = [_keep_old(p) for p in own]
    try:
        for path, end in zip(paths, ends):
            tmps.append(temp_beside(path, end))
        yield list(tmps)
        _commit(tmps, paths)
    except BaseException:
        _roll_back(own, kept)
        raise
    finally:
        for tmp in tmps + [k for k in kept if k is not None]:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def _keep_old(path: Path) -> Path | None:
    """A second name for the file at `path` (a hard link; a copy where links are not
    supported), so that it can be put back; None if there is no file there."""
    if not path.is_file():
        return None
    keep = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"  # clean_stale_temps' naming
    try:
        os.link(path, keep)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        shutil.copy2(path, keep)
    return keep


def _commit(tmps: list[Path], paths: list[Path]) -> None:
    """Rename every tmps[i] onto paths[i], or roll back to the files that were there."""
    kept: list[Path | None] = []
    done: list[Path] = []
    try:
        for path in paths:
            kept.append(_keep_old(path))
        for tmp, path in zip(tmps, paths):
            move_into_place(tmp, path)
            done.append(path)
    except OSError as err:
        failed = paths[len(done)] if len(kept) == len(paths) else paths[len(kept)]
        stuck = _roll_back(done, kept)
        what = f"{err.strerror or type(err).__name__}"
        if stuck:
            raise InputError(f"{failed}: cannot write the output ({what}); {len(stuck)} "
                             f"other output(s) could not be rolled back and hold the new "
                             f"result: {', '.join(map(str, stuck))}") from None
        others = [str(p) for p in paths if p != failed]
        left = f"; {', '.join(others)} left as {'they were' if len(others) > 1 else 'it was'}" \
            if others else ""
        raise InputError(f"{failed}: cannot write the output ({what}){left}") from None
    finally:
        for keep in kept:
            if keep is not None:
                with contextlib.suppress(OSError):
                    keep.unlink(missing_ok=True)


def _roll_back(done: list[Path], kept: list[Path | None]) -> list[Path]:
    """Put back the old file of each replaced destination (remove it if it was new); return
    the destinations that could not be put back."""
    stuck = []
    for path, keep in zip(done, kept):
        try:
            if keep is not None:
                os.replace(keep, path)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            stuck.append(path)
    return stuck


def clean_stale_temps(path: Path, now: float | None = None) -> list[Path]:
    """Remove the temporary files `atomic_path` leaves for `path` when its process is killed,
    `.<name>.<8 random characters><.tmp or the name's own ending>` (tempfile.mkstemp's names),
    once nobody has touched them for `STALE_AFTER_S` seconds; return what was removed."""
    from segmote.io.image import split_ext

    path = Path(path)
    if not path.parent.is_dir():
        return []
    ends = "|".join(re.escape(e) for e in {".tmp", split_ext(path)[1]} if e)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}({ends})")
    now = time.time() if now is None else now
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
        try:
            if pattern.fullmatch(tmp.name) and tmp.is_file() and \
                    now - tmp.stat().st_mtime > STALE_AFTER_S:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # another run removed it, or we may not: leave it
    return removed
