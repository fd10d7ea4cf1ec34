"""Shared by the `segmote serve` tests: the bundled samples, the CLI's answer for a prompt, and
an in-process client for an app with given settings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

import segmote
from segmote.cli.main import main as cli

ASSETS = Path(segmote.__file__).parent / "assets" / "samples"
CT = ASSETS / "lung2_ct_crop.nii.gz"
NUCLEI = ASSETS / "nuclei.png"
# the sample's tumour on slice 7 (box of samples.json, one slice)
BOX_2D, K = (83, 93, 173, 162), 7


def cli_label(tmp: Path, image: Path, box: str, ending: str, *extra: str) -> np.ndarray:
    """The label map `segmote predict` writes for one box (the reference for the API)."""
    out = tmp / f"cli_{image.name.split('.')[0]}{ending}"
    assert cli(["predict", "-i", str(image), "-o", str(out), "--box", box, "-q", *extra]) == 0
    return read_label(out)


def read_label(path: Path) -> np.ndarray:
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj)
    return np.asarray(Image.open(path))


@contextlib.contextmanager
def client(model, **settings) -> Iterator:
    """A TestClient on an app with these ServeConfig settings (no prefetch unless asked)."""
    from fastapi.testclient import TestClient

    from segmote.serve import ServeConfig, create_app

    settings.setdefault("prefetch", 0)
    base = settings.pop("base_url", "http://127.0.0.1")
    with TestClient(create_app(ServeConfig(**settings), model=model), base_url=base) as c:
        yield c


def upload(c, path: Path, name: str | None = None) -> dict:
    with open(path, "rb") as f:
        r = c.post("/api/images", files={"file": (name or path.name, f)})
    assert r.status_code == 200, r.text
    return r.json()
