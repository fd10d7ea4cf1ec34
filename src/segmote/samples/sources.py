"""The real datasets behind `segmote samples fetch`: which package holds them, the sha256 of every file
used, and the conversion of each to the nnU-Net v2 raw layout (or images/ + labels/ for 2-D).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segmote.checkpoint import sha256_file
from segmote.errors import InputError
from segmote.samples._fetch import (Progress, apt_download, archive_members, check_sha256,
                                    deb_members, extract_verified, pip_download,
                                    require_modules, write_json)

if TYPE_CHECKING:
    import nibabel as nib

# --- what each package must contain (sha256 recorded from the first fetch) ---------------------

PYRADIOMICS_SDIST_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
PYRADIOMICS_FILES = {  # members of pyradiomics-3.0.1.tar.gz, below "pyradiomics-3.0.1/"
    "data/brain1_image.nrrd": "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
    "data/brain1_label.nrrd": "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
    "data/brain2_image.nrrd": "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e",
    "data/brain2_label.nrrd": "15189c024936ecc337649b9a10c475117c7c40df0d53c22163f9a2023ed741a5",
    "data/breast1_image.nrrd": "0e8b668f3ce9b9aacff20dc3c216866f43069ff96b269fb45b76f5e205a431e2",
    "data/breast1_label.nrrd": "07085bb0e36a956de5bd1c1c1b5f8bdf2ce80952125b13cbd352412c108c8950",
    "data/lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "data/lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
    "data/lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "data/lung2_label.nrrd": "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
    "LICENSE.txt": "5c1fc504fb0865a72a29e035b25ef3513e6d7e9c7169cb445eae855f03b006e2",
}
# nnU-Net datasets hold one modality each, hence two datasets; every case is a different patient.
PYRADIOMICS_DATASETS = (
    ("Dataset001_PyradiomicsCT", "CT", ("lung1", "lung2")),
    ("Dataset002_PyradiomicsMR", "MR", ("brain1", "brain2", "breast1")),
)

# The wheel is platform-specific; pinning one platform makes every host download the same file.
STARDIST_WHEEL_ARGS = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
                       "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")
STARDIST_WHEEL_SHA256 = "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023"
STARDIST_FILES = {
    "stardist/data/images/img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    "stardist/data/images/mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
    "stardist-0.9.2.dist-info/licenses/LICENSE.txt":
        "c279e190706f46dd920854b64d0d823a33be1981c187f581eb432b273f797492",
}

# The .deb differs between Debian releases, so only the files we use are pinned (from bookworm's
# mricron-data 1.2.20211006+dfsg-4).
COLIN27_FILES = {
    "usr/share/mricron/templates/ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    "usr/share/mricron/templates/ch2bet.nii.gz": "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1",
    "usr/share/mricron/templates/aal.nii.gz": "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454",
    "usr/share/mricron/templates/aal.nii.txt": "1788d6556a9ec056de9867b2382cf1ce1b51b87ae4cfd9cd25de48ae4dde709e",
    "usr/share/doc/mricron-data/copyright": "43e7d3d89e7f94213847ae742ff2c0d8e2568e8fc862e94726518417df6183eb",
}
ATLAS_TERMS = """\
The images come from the Debian package mricron-data, whose packaging is BSD-3-Clause (Debian
copyright file below). The atlases carry their own terms, which this copyright file does not grant:
  - ch2 / ch2bet: the Colin27 single-subject T1 template (Holmes et al., J Comput Assist Tomogr
    1998), Montreal Neurological Institute;
  - aal: Automated Anatomical Labeling atlas (Tzourio-Mazoyer et al., NeuroImage 2002).
segmote fetches them at use and never redistributes them. Cite the papers above; check the
original terms before redistributing or publishing derived data. Atlas labels are atlas
delineations on one subject, not clinical ground truth.
"""



# --- pyradiomics: CT and MR tumours (NRRD, LPS) ------------------------------------------------

def fetch_pyradiomics(download: Path, out: Path, log: Progress) -> None:
    """pyradiomics 3.0.1 sdist -> Dataset001_PyradiomicsCT + Dataset002_PyradiomicsMR."""
    # pip prepares the sdist's metadata by running its setup.py, which imports numpy.
    require_modules(("numpy", "setuptools"),
                     "downloading the pyradiomics sdist needs numpy and setuptools in this Python")
    log("downloading pyradiomics==3.0.1 sdist from PyPI (34 MB)")
    # --no-binary: a wheel (on some Pythons) lacks data/; only the sdist has it.
    archive = pip_download("pyradiomics==3.0.1",
                            ("--no-build-isolation", "--no-binary", "pyradiomics"),
                            download / "sdist", env=_py312_setup_shim(download / "shim"))
    check_sha256(sha256_file(archive), PYRADIOMICS_SDIST_SHA256, archive.name)
    wanted = {f"pyradiomics-3.0.1/{k}": v for k, v in PYRADIOMICS_FILES.items()}
    files = extract_verified(archive_members(archive), wanted, download / "src", archive.name)
    src = download / "src"
    licence = files["pyradiomics-3.0.1/LICENSE.txt"].read_text(encoding="utf-8")
    for folder, channel, cases in PYRADIOMICS_DATASETS:
        log(f"converting {folder} ({', '.join(cases)})")
        _write_nrrd_dataset(src, out / folder, channel, cases, licence)
    (out / "LICENSE.txt").write_text(licence, encoding="utf-8")


# pyradiomics 3.0.1's bundled versioneer calls configparser.SafeConfigParser and .readfp, both
# removed in Python 3.12, so pip cannot prepare the sdist's metadata there. Without build isolation
# the setup.py subprocess inherits PYTHONPATH, so a sitecustomize restores the two old names for
# that subprocess only (no-ops on Python <= 3.11).
_SETUP_SHIM = """\
import configparser
if not hasattr(configparser, "SafeConfigParser"):
    configparser.SafeConfigParser = configparser.ConfigParser
if not hasattr(configparser.RawConfigParser, "readfp"):
    configparser.RawConfigParser.readfp = configparser.RawConfigParser.read_file
"""


def _py312_setup_shim(folder: Path) -> dict[str, str]:
    """Environment for pip whose subprocesses import the shim above first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SETUP_SHIM, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    return env


def _write_nrrd_dataset(src: Path, ds: Path, channel: str, cases: tuple[str, ...],
                        licence: str) -> None:
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for case in cases:
        _convert_nrrd_case(src, ds, case)
    write_json(ds / "dataset.json", {
        "name": ds.name,
        "channel_names": {"0": channel},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(cases),
        "file_ending": ".nrrd",
        "patient_of_case": {case: f"pyradiomics-{case}" for case in cases},
        "licence": "BSD-3-Clause, Copyright 2017 Harvard Medical School (pyradiomics 3.0.1 "
                   "test data); full text in LICENSE.txt",
        "source": "PyPI pyradiomics==3.0.1 sdist, data/<case>_{image,label}.nrrd",
    })
    (ds / "LICENSE.txt").write_text(licence, encoding="utf-8")


def _convert_nrrd_case(src: Path, ds: Path, case: str) -> None:
    """Copy image and label byte for byte (geometry untouched); binarize the label only if needed."""
    import SimpleITK as sitk  # lazy: only fetching needs it

    image_file, label_file = src / f"{case}_image.nrrd", src / f"{case}_label.nrrd"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_file))
    reader.ReadImageInformation()
    label = sitk.ReadImage(str(label_file))
    same_grid = (reader.GetSize() == label.GetSize()
                 and np.allclose(reader.GetSpacing(), label.GetSpacing(), atol=1e-6)
                 and np.allclose(reader.GetOrigin(), label.GetOrigin(), atol=1e-4)
                 and np.allclose(reader.GetDirection(), label.GetDirection(), atol=1e-6))
    if not same_grid:
        raise InputError(f"pyradiomics {case}: image and label are not on the same grid")
    shutil.copyfile(image_file, ds / "imagesTr" / f"{case}_0000.nrrd")
    values = np.unique(sitk.GetArrayViewFromImage(label))
    if set(values.tolist()) <= {0, 1}:
        shutil.copyfile(label_file, ds / "labelsTr" / f"{case}.nrrd")
    else:  # any non-zero value is tumour; the comparison keeps origin/spacing/direction
        binary = sitk.Cast(label != 0, sitk.sitkUInt8)
        sitk.WriteImage(binary, str(ds / "labelsTr" / f"{case}.nrrd"), useCompression=True)


# --- nuclei: 2018 DSB fluorescence image from the stardist wheel -------------------------------

def fetch_nuclei(download: Path, out: Path, log: Progress) -> None:
    """stardist 0.9.2 wheel -> images/ labels/ instances/ with one 512 x 512 image."""
    import tifffile  # lazy: only fetching needs it

    log("downloading stardist==0.9.2 wheel from PyPI (3 MB)")
    archive = pip_download("stardist==0.9.2", STARDIST_WHEEL_ARGS, download / "wheel")
    check_sha256(sha256_file(archive), STARDIST_WHEEL_SHA256, archive.name)
    files = extract_verified(archive_members(archive), STARDIST_FILES, download / "src",
                              archive.name)
    image = tifffile.imread(files["stardist/data/images/img2d.tif"])
    instances = tifffile.imread(files["stardist/data/images/mask2d.tif"])
    if image.shape != instances.shape or image.ndim != 2:
        raise InputError(f"stardist img2d/mask2d: unexpected shapes {image.shape}, {instances.shape}")
    log("converting nuclei (1 image, instance + binary masks)")
    for sub in ("images", "labels", "instances"):
        (out / sub).mkdir(parents=True)
    save_png(lossless_png_array(image), out / "images" / "nuclei_000.png")
    save_png((instances > 0).astype(np.uint8), out / "labels" / "nuclei_000.png")
    save_png(instances.astype(np.uint16), out / "instances" / "nuclei_000.png")
    licence = files["stardist-0.9.2.dist-info/licenses/LICENSE.txt"].read_text(encoding="utf-8")
    (out / "LICENSE.txt").write_text(licence, encoding="utf-8")
    write_json(out / "dataset.json", {
        "name": "nuclei",
        "channel_names": {"0": "fluorescence microscopy"},
        "labels": {"background": 0, "nuclei": 1},
        "numTraining": 1,
        "file_ending": ".png",
        "instances": "instances/<case>.png: uint16 nucleus ids as in the source (0 = background, "
                     f"{len(np.unique(instances)) - 1} nuclei, ids not consecutive)",
        "licence": "BSD-3-Clause, Copyright 2018-2025 Uwe Schmidt, Martin Weigert (stardist "
                   "0.9.2); image from the 2018 Data Science Bowl (Caicedo et al., Nature Methods "
                   "2019); full text in LICENSE.txt",
        "source": "PyPI stardist==0.9.2 wheel, stardist/data/images/{img2d,mask2d}.tif",
    })


def lossless_png_array(image: np.ndarray) -> np.ndarray:
    """The image as uint8 when every value fits (same numbers, displays in any viewer), else uint16.

    Intensities are never rescaled; values that fit neither raise InputError.
    """
    if not np.issubdtype(image.dtype, np.integer) or image.ndim != 2:
        raise InputError(f"cannot store a {image.dtype} {image.ndim}-D image losslessly as PNG")
    low, high = int(image.min()), int(image.max())
    if low >= 0 and high <= 255:
        return image.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return image.astype(np.uint16)
    raise InputError(f"image values {low}..{high} do not fit a 16-bit PNG")


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a 2-D uint8/uint16 array as an 8/16-bit greyscale PNG, exactly."""
    from PIL import Image  # lazy

    Image.fromarray(array).save(path, format="PNG")


# --- colin27: Colin27 T1 + AAL atlas + brain mask from Debian mricron-data ---------------------

def fetch_colin27(download: Path, out: Path, log: Progress) -> None:
    """mricron-data .deb -> Dataset003_Colin27AAL (116 regions) + Dataset004_Colin27Brain."""
    import nibabel as nib  # lazy

    log("downloading Debian package mricron-data (16 MB) with apt-get")
    deb = apt_download("mricron-data", download / "deb")
    files = extract_verified(deb_members(deb), COLIN27_FILES, download / "src", deb.name)
    src = download / "src"
    images = {n: nib.load(src / f"{n}.nii.gz") for n in ("ch2", "ch2bet", "aal")}
    for n, img in images.items():  # one grid, so labels drawn on one are valid on all
        if img.shape != images["ch2"].shape or not np.array_equal(img.affine, images["ch2"].affine):
            raise InputError(f"mricron-data: {n}.nii.gz is not on the grid of ch2.nii.gz")
    licence = ATLAS_TERMS + "\n" + "-" * 72 + "\n" + files[
        "usr/share/doc/mricron-data/copyright"].read_text(encoding="utf-8")
    table = parse_aal_table(src / "aal.nii.txt")
    log("converting Dataset003_Colin27AAL (116 regions) and Dataset004_Colin27Brain")
    aal = out / "Dataset003_Colin27AAL"
    _colin27_dataset(aal, src / "ch2.nii.gz", licence,
                     {"background": 0, **{name: index for index, name, _ in table}},
                     aal_code_of_label={name: code for _, name, code in table})
    _write_aal_labels(images["aal"], src / "aal.nii.gz", table, aal / "labelsTr" / "colin27.nii.gz")
    brain = out / "Dataset004_Colin27Brain"
    _colin27_dataset(brain, src / "ch2.nii.gz", licence, {"background": 0, "brain": 1})
    bet = images["ch2bet"]
    mask = nib.Nifti1Image((np.asanyarray(bet.dataobj) > 0).astype(np.uint8), bet.affine, bet.header)
    mask.header.set_data_dtype(np.uint8)
    mask.header["cal_min"], mask.header["cal_max"] = 0, 1
    nib.save(mask, brain / "labelsTr" / "colin27.nii.gz")
    (out / "LICENSE.txt").write_text(licence, encoding="utf-8")


def _colin27_dataset(ds: Path, ch2: Path, licence: str, labels: dict[str, int],
                     **extra: object) -> None:
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    shutil.copyfile(ch2, ds / "imagesTr" / "colin27_0000.nii.gz")  # a copy keeps the affine exactly
    write_json(ds / "dataset.json", {
        "name": ds.name,
        "channel_names": {"0": "MR"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "patient_of_case": {"colin27": "colin27"},
        "licence": "mricron-data packaging BSD-3-Clause; the Colin27 template and AAL atlas carry "
                   "their own terms (see LICENSE.txt); fetched at use, do not redistribute",
        "source": "Debian mricron-data, /usr/share/mricron/templates/{ch2,ch2bet,aal}.nii.gz",
        **extra,
    })
    (ds / "LICENSE.txt").write_text(licence, encoding="utf-8")


def parse_aal_table(path: Path) -> list[tuple[int, str, int]]:
    """Rows ``(index, name, original AAL code)`` of ``aal.nii.txt``; indices must be 1..N."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            index, name, code = line.split()
            rows.append((int(index), name, int(code)))
    if [r[0] for r in rows] != list(range(1, len(rows) + 1)):
        raise InputError(f"{path.name}: region indices are not 1..{len(rows)}")
    return rows


def _write_aal_labels(aal: nib.Nifti1Image, aal_file: Path, table: list[tuple[int, str, int]],
                      dest: Path) -> None:
    """Store the AAL volume with consecutive values 1..N (mricron's copy already is: then copy it)."""
    import nibabel as nib

    data = np.asanyarray(aal.dataobj)
    values = set(np.unique(data).tolist()) - {0}
    if values <= {index for index, _, _ in table}:
        shutil.copyfile(aal_file, dest)
        return
    lookup = {code: index for index, _, code in table}
    if not values <= set(lookup):
        raise InputError(f"{aal_file.name}: values {sorted(values - set(lookup))[:5]} not in the table")
    mapped = np.zeros(data.shape, np.uint8)
    for code, index in lookup.items():
        mapped[data == code] = index
    out = nib.Nifti1Image(mapped, aal.affine, aal.header)
    out.header.set_data_dtype(np.uint8)
    nib.save(out, dest)

