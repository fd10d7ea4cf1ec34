"""Where images come from: uploads (a file, or a zip holding a DICOM series) and the root folder.

Files are opened only under the root: a relative path with no `..` part, resolved (symlinks
followed) to a place still inside the root; anything else is answered 404 like a missing file,
so the answer does not tell what exists outside.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

from segmote.errors import InputError
from segmote.io import ImageData, read_image
from segmote.io.image import READ_FORMATS, split_ext
from segmote.serve.errors import ApiError, not_found

UPLOAD_ENDINGS = tuple(sorted(READ_FORMATS)) + (".zip",)


def upload_name(filename: str | None) -> str:
    """A safe local name for an upload, keeping its ending (readers choose by ending)."""
    stem, ext = split_ext(PurePosixPath(filename or "").name)
    if ext not in UPLOAD_ENDINGS:
        shown = f"'{ext}'" if ext else "(no file ending)"
        raise ApiError(415, f"{filename or 'upload'}: unsupported file type {shown}; expected "
                            f"one of {' '.join(UPLOAD_ENDINGS)}")
    return "upload" + ext


def read_upload(path: Path, shown_name: str, limit_bytes: int) -> ImageData:
    """Read an uploaded file (a zip: the DICOM series inside it). Error messages name the file
    as the user called it, not the temporary copy."""
    try:
        if path.suffix.lower() == ".zip":
            return read_image(_unzip_series(path, limit_bytes))
        return read_image(path)
    except InputError as err:
        raise InputError(str(err).replace(str(path.parent / "series"), shown_name)
                         .replace(str(path), shown_name)) from None


def _unzip_series(path: Path, limit_bytes: int) -> Path:
    """Extract a zip's files flat into a folder (names reduced to their last part, so no
    member writes outside it); refuses archives that unpack past 4 x the upload limit."""
    folder = path.parent / "series"
    folder.mkdir()
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()
                       and not PurePosixPath(m.filename).name.startswith(".")
                       and "__MACOSX" not in m.filename]
            if sum(m.file_size for m in members) > 4 * limit_bytes:
                raise InputError(f"{path}: unpacks to more than 4 x the upload limit")
            for n, member in enumerate(members):
                target = folder / f"{n:06d}_{PurePosixPath(member.filename).name}"
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable zip file ({err})") from None
    if not members:
        raise InputError(f"{path}: the zip file holds no files")
    return folder


def resolve_under(root: Path, relative: str) -> Path:
    """The existing file or folder `relative` names under `root`; 404 for '..', absolute
    paths, symlinks that lead out of the root, and missing paths."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if relative.startswith(("/", "\\")) or ".." in parts or any(":" in p for p in parts):
        raise not_found(relative)
    base = root.resolve()
    target = (base / PurePosixPath(*parts)).resolve() if parts else base
    if target != base and base not in target.parents or not target.exists():
        raise not_found(relative)
    return target


def list_folder(root: Path, relative: str) -> dict:
    """The entries of a folder under `root` that the page can open or enter."""
    folder = resolve_under(root, relative)
    if not folder.is_dir():
        raise ApiError(400, f"{relative}: not a folder")
    base = root.resolve()
    entries = []
    for p in sorted(folder.iterdir(), key=lambda q: q.name.lower()):
        if p.name.startswith("."):
            continue
        real = p.resolve()
        if real != base and base not in real.parents:
            continue  # a symlink out of the root: not shown, not opened
        if p.is_dir():
            entries.append({"name": p.name, "type": "folder"})
        elif split_ext(p)[1] in READ_FORMATS:
            entries.append({"name": p.name, "type": "file", "bytes": p.stat().st_size})
    rel = folder.relative_to(base).as_posix()
    return {"folder": "" if rel == "." else rel, "entries": entries}
