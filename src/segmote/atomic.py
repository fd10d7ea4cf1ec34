"""Atomic file writes: readers (and a killed run) never see a half-written file.

The one implementation for every output of segmote (label maps, adapters, caches, reports,
benchmark results): write to a temporary file in the destination folder, then rename it over
the destination, which is atomic on POSIX and Windows file systems. `tempfile.mkstemp`
creates files readable by the owner only; the finished file gets the permissions an ordinary
`open(path, "w")` would give (0666 minus the umask), so adapters, configs and reports can be
shared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(mask)
    return mask


def temp_beside(path: str | Path, suffix: str = ".tmp") -> Path:
    """Create (empty) and return a unique temporary file next to `path`, named
    `.<name>.<8 random characters><suffix>` (`segmote.outputs.clean_stale_temps` knows the
    naming); `path`'s parent is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def move_into_place(tmp: str | Path, path: str | Path) -> None:
    """Give `tmp` ordinary permissions and rename it over `path` (atomic)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a unique temporary path next to `path` (its parent is created); when the block
    ends normally the temporary file replaces `path`, otherwise it is removed.

    suffix: the temporary file's ending, for writers that pick a format by extension (".png").
    Unique names let several processes (DDP ranks) write the same destination at once.
    """
    tmp = temp_beside(path, suffix)
    try:
        yield tmp
        move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_sibling_files(path: str | Path) -> Iterator[Path]:
    """Yield `path`'s name inside a temporary folder next to it, for writers that write several
    files named after it (a detached header: `.nhdr` + `.raw.gz`, `.mhd` + `.raw`, where the
    header names its data file). When the block ends normally every file there moves out, the
    file named `path` last, so `path` appears only once its data is in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp-dir", dir=path.parent))
    try:
        yield folder / path.name
        for item in sorted(folder.iterdir(), key=lambda p: p.name == path.name):
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str, newline: str | None = None) -> None:
    """Write `text` (UTF-8) to `path` atomically; newline as in `open` ("" keeps "\\r\\n")."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline=newline) as handle:
            handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
