"""One training process per run folder, and no half-made run folder after a failed start.

`run_folder` takes an exclusive lock on RUN_DIR: a file `.segmote-train.lock` holding the
owner's pid, locked with `flock` (the kernel drops that lock when its process dies, however it
dies) and removed on exit. A lock file whose flock is free was left by a dead process: it is
taken over with a warning. If a fresh run fails before its first saved training state, what it
wrote (config.yaml, split.json, cache/, logs) is removed again, and the folder too if it made it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from segmote.errors import InputError

LOCK_NAME = ".segmote-train.lock"


def _lock(path: Path):
    """Open and flock `path`; return (handle, pid of a stale owner or None). InputError when a
    live process holds it."""
    import fcntl

    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise InputError(f"{path.parent}: another training run (pid {owner}) is using this "
                             "run folder; wait for it to end or choose another folder") from None
        try:  # the owner may have removed the file between our open and our flock: retry
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    stale = handle.read().strip() or None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle, stale


@contextlib.contextmanager
def run_folder(out_dir: Path, resume: bool, state_file: str, owner: bool = True,
               inputs: Sequence[Path] = ()) -> Iterator[None]:
    """Hold the run folder `out_dir` for the block (see the module doc).

    state_file: the name of the resumable training state; once it exists a failure keeps the
        folder (the run can be resumed). owner: False for the other ranks of a DDP run, which
        neither lock nor clean (rank 0 does both).
    inputs: dataset folders the run reads; the run folder may not be one of them or inside one.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; the run folder must be a folder (or a new path)")
    for source in inputs:
        if out_dir.resolve().is_relative_to(Path(source).resolve()):
            raise InputError(f"{out_dir}: the run folder lies in the dataset folder {source}; "
                             "choose a folder outside the data")
    if not owner:
        yield
        return
    made = not out_dir.exists()
    before = set() if made else set(out_dir.iterdir())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out_dir}: cannot create the run folder ({err.strerror})") from None
    lock_path = out_dir / LOCK_NAME
    handle, stale = _lock(lock_path)
    if stale and stale != str(os.getpid()):
        warnings.warn(f"{lock_path}: lock of pid {stale} was stale (that process is gone); "
                      "taken over", stacklevel=3)
    try:
        yield
    except BaseException:
        if not resume and not (out_dir / state_file).exists():
            _remove_new(out_dir, before | {lock_path}, made)
        raise
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        handle.close()
        if made:  # the folder this run made holds nothing but the lock: remove it too
            with contextlib.suppress(OSError):
                out_dir.rmdir()


def _remove_new(out_dir: Path, keep: set[Path], made: bool) -> None:
    """Remove every entry of `out_dir` not in `keep` (what a failed fresh start wrote)."""
    for entry in set(out_dir.iterdir()) - keep:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
