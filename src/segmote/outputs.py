"""The output files of one command: checked before any work, written together at the end.

`check_outputs` refuses, before anything is read or computed, an output that would replace an
input or another output, an existing file of another kind, a folder, or a place that cannot be
written or lacks the space. `written_together` gives every output a temporary file beside it
(`segmote.atomic.atomic_path`) and renames them all only when the whole block succeeded, so a
failed command leaves none of its outputs behind. `clean_stale_temps` removes temporary files
of that naming left by a killed run (SIGKILL skips every cleanup).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from segmote.atomic import atomic_path
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
                     ) -> Iterator[list[Path]]:
    """Yield one temporary path per destination; all are renamed onto their destinations when
    the block ends normally, none when it raises (the temporary files are removed then).

    suffixes: each temporary file's ending, for writers that choose a format by it.
    """
    with contextlib.ExitStack() as stack:
        ends = suffixes or [".tmp"] * len(paths)
        yield [stack.enter_context(atomic_path(p, s)) for p, s in zip(paths, ends)]


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
