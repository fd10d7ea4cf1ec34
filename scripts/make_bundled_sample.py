#!/usr/bin/env python
"""Regenerate ``src/segmote/assets/samples/`` (the tiny sample shipped with segmote).

Needs the fetched samples: ``segmote samples fetch pyradiomics nuclei``. Deterministic: the same
inputs give the same arrays, boxes and JSON. Writes:

- ``lung2_ct_crop.nii.gz`` / ``lung2_ct_crop_label.nii.gz``: pyradiomics lung2 CT (int16 HU) and its
  tumour mask, cut to the labelled slices plus 2 on each side and, if the full 512 x 512 slices do
  not fit the budget, to 256 x 256 centred on the tumour; affine from the NRRD geometry, LPS -> RAS.
- ``nuclei.png`` / ``nuclei_label.png`` / ``nuclei_instances.png``: the stardist DSB2018 image with
  raw intensities, its binary mask and its instance ids.
- ``samples.json`` (what each file is, with an example box), ``README.md``, ``LICENSE.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

from segmote.samples import lossless_png_array, sample_path, save_png

OUT = Path(__file__).resolve().parents[1] / "src" / "segmote" / "assets" / "samples"
BUDGET_BYTES = 2_000_000
CT_IMAGE_BUDGET_BYTES = 1_500_000  # leaves room for the label, the nuclei PNGs and the texts
Z_MARGIN = 2
CROP_XY = 256
BOX_PAD_CT = 2
BOX_PAD_NUCLEI = 1  # the nuclei reference protocol in docs/data.md pads by 1 px
MIN_NUCLEUS_PX = 30
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def padded_box(mask: np.ndarray, pad: int) -> list[int]:
    """Inclusive index box ``[lo_0, lo_1, ..., hi_0, hi_1, ...]`` of ``mask``, padded and clamped."""
    idx = np.nonzero(mask)
    lo = [max(int(i.min()) - pad, 0) for i in idx]
    hi = [min(int(i.max()) + pad, n - 1) for i, n in zip(idx, mask.shape)]
    return lo + hi


def ras_affine(image: sitk.Image, start_ijk: tuple[int, int, int]) -> np.ndarray:
    """RAS affine of the sub-volume starting at voxel ``start_ijk`` of an ITK (LPS) image."""
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = np.array(image.GetOrigin()) + lps[:3, :3] @ np.array(start_ijk, float)
    return LPS_TO_RAS @ lps


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)  # scanner coordinates, as in the source CT
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def ct_window(shape_xy: tuple[int, int], box: list[int], size: int | None) -> tuple[slice, slice]:
    """Full slices when ``size`` is None, else a ``size`` square centred on the box, in bounds."""
    if size is None:
        return slice(0, shape_xy[0]), slice(0, shape_xy[1])
    out = []
    for axis in (0, 1):
        centre = (box[axis] + box[axis + 3] + 1) // 2
        start = min(max(centre - size // 2, 0), shape_xy[axis] - size)
        out.append(slice(start, start + size))
    return out[0], out[1]


def make_lung2(tmp: Path) -> dict:
    """Write the CT crop and its label into ``tmp``; return the samples.json entry."""
    ds = sample_path("pyradiomics") / "Dataset001_PyradiomicsCT"
    image = sitk.ReadImage(str(ds / "imagesTr" / "lung2_0000.nrrd"))
    label = sitk.ReadImage(str(ds / "labelsTr" / "lung2.nrrd"))
    vol = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK (z, y, x) -> index order (i, j, k)
    lab = sitk.GetArrayFromImage(label).transpose(2, 1, 0) > 0
    tight = padded_box(lab, 0)
    zs = slice(max(tight[2] - Z_MARGIN, 0), min(tight[5] + Z_MARGIN, vol.shape[2] - 1) + 1)
    for size in (None, CROP_XY):  # keep full slices if they fit the budget
        xs, ys = ct_window(vol.shape[:2], tight, size)
        start = (xs.start, ys.start, zs.start)
        affine = ras_affine(image, start)
        save_nifti(vol[xs, ys, zs].astype(np.int16), affine, tmp / "lung2_ct_crop.nii.gz")
        if (tmp / "lung2_ct_crop.nii.gz").stat().st_size <= CT_IMAGE_BUDGET_BYTES:
            break
    crop_lab = lab[xs, ys, zs].astype(np.uint8)
    save_nifti(crop_lab, affine, tmp / "lung2_ct_crop_label.nii.gz")
    check_geometry(image, tmp / "lung2_ct_crop.nii.gz", start, vol[xs, ys, zs])
    return {
        "image": "lung2_ct_crop.nii.gz",
        "label": "lung2_ct_crop_label.nii.gz",
        "modality": "CT",
        "dims": 3,
        "shape": list(crop_lab.shape),
        "spacing_mm": [round(s, 7) for s in image.GetSpacing()],
        "intensity": "int16 Hounsfield units, unscaled",
        "labels": {"background": 0, "tumour": 1},
        "box": padded_box(crop_lab, BOX_PAD_CT),
        "box_format": "[x0, y0, z0, x1, y1, z1]: inclusive (i, j, k) indices of the stored array; "
                      f"tight box of the label padded by {BOX_PAD_CT} voxels, clamped",
        "axes": "array (i, j, k) = source NRRD (x, y, z) in LPS; affine in RAS (L/R and A/P "
                "negated); a 2-D slice for display/prompting is vol[:, :, k].T (rows = j, cols = i)",
        "source": {
            "sample": "pyradiomics", "case": "lung2", "patient": "pyradiomics-lung2",
            "file": "Dataset001_PyradiomicsCT/imagesTr/lung2_0000.nrrd",
            "source_shape": list(vol.shape), "crop_start_ijk": list(start),
        },
        "licence": "BSD-3-Clause, Copyright 2017 Harvard Medical School; see LICENSE.txt",
    }


def check_geometry(source: sitk.Image, nifti: Path, start: tuple[int, int, int],
                   expected: np.ndarray) -> None:
    """The written NIfTI must read back (through ITK) as the same voxels at the same places."""
    back = sitk.ReadImage(str(nifti))
    roi = sitk.RegionOfInterest(source, back.GetSize(), start)
    assert np.allclose(back.GetOrigin(), roi.GetOrigin(), atol=1e-3), (back.GetOrigin(), roi.GetOrigin())
    assert np.allclose(back.GetSpacing(), roi.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetDirection(), roi.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), expected)


def pick_nucleus(instances: np.ndarray) -> int:
    """A typical, whole nucleus: median area among those >= 30 px whose padded box is in bounds."""
    candidates = []
    for value in np.unique(instances[instances > 0]):
        mask = instances == value
        rows, cols = np.nonzero(mask)
        inside = (rows.min() > BOX_PAD_NUCLEI and cols.min() > BOX_PAD_NUCLEI
                  and rows.max() < mask.shape[0] - 1 - BOX_PAD_NUCLEI
                  and cols.max() < mask.shape[1] - 1 - BOX_PAD_NUCLEI)
        if inside and mask.sum() >= MIN_NUCLEUS_PX:
            candidates.append((int(mask.sum()), int(value)))
    candidates.sort()
    return candidates[len(candidates) // 2][1]


def make_nuclei(tmp: Path) -> dict:
    """Write the nuclei image, binary label and instance ids into ``tmp``; return the entry."""
    root = sample_path("nuclei")
    image = np.array(Image.open(root / "images" / "nuclei_000.png"))
    instances = np.array(Image.open(root / "instances" / "nuclei_000.png"))
    save_png(lossless_png_array(image), tmp / "nuclei.png")
    save_png((instances > 0).astype(np.uint8), tmp / "nuclei_label.png")
    save_png(instances.astype(np.uint16), tmp / "nuclei_instances.png")
    chosen = pick_nucleus(instances)
    r0, c0, r1, c1 = padded_box(instances == chosen, BOX_PAD_NUCLEI)
    return {
        "image": "nuclei.png",
        "label": "nuclei_label.png",
        "instances": "nuclei_instances.png",
        "modality": "fluorescence microscopy",
        "dims": 2,
        "shape": list(image.shape),
        "intensity": f"raw values {int(image.min())}..{int(image.max())} (source uint16 TIFF; "
                     "stored as 8-bit PNG because every value fits, not rescaled)",
        "labels": {"background": 0, "nuclei": 1},
        "num_instances": int(len(np.unique(instances)) - 1),
        "box": [c0, r0, c1, r1],
        "box_instance": chosen,
        "box_format": "[x0, y0, x1, y1]: inclusive pixel indices, x = column, y = row; tight box "
                      f"of instance box_instance in nuclei_instances.png padded by {BOX_PAD_NUCLEI} px",
        "source": {"sample": "nuclei", "file": "images/nuclei_000.png",
                   "origin": "stardist 0.9.2 stardist/data/images/{img2d,mask2d}.tif, 2018 Data "
                             "Science Bowl (Caicedo et al., Nature Methods 2019)"},
        "licence": "BSD-3-Clause, Copyright 2018-2025 Uwe Schmidt, Martin Weigert; see LICENSE.txt",
    }


def write_texts(tmp: Path, entries: dict) -> None:
    lung, nuc = entries["lung2_ct_crop"], entries["nuclei"]
    start, shape = lung["source"]["crop_start_ijk"], lung["shape"]
    src = lung["source"]["source_shape"]
    (tmp / "samples.json").write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(f"""\
# Bundled sample data

Real data, small enough to ship inside segmote so the first command needs no download.
Regenerate with `python scripts/make_bundled_sample.py` after `segmote samples fetch pyradiomics
nuclei`. Full datasets: `segmote samples list`. Licence texts: `LICENSE.txt`.

## lung2_ct_crop.nii.gz, lung2_ct_crop_label.nii.gz
- Source: PyPI `pyradiomics==3.0.1` sdist, `data/lung2_image.nrrd` and `data/lung2_label.nrrd`
  (one patient's chest CT with a lung tumour mask). Licence: BSD-3-Clause, Copyright 2017 Harvard
  Medical School.
- Cut: source grid {src[0]} x {src[1]} x {src[2]} (x, y, z); kept x {start[0]}..{start[0] + shape[0] - 1},
  y {start[1]}..{start[1] + shape[1] - 1}, z {start[2]}..{start[2] + shape[2] - 1} (the labelled slices plus
  {Z_MARGIN} on each side{', in-plane ' + str(CROP_XY) + ' x ' + str(CROP_XY) + ' centred on the tumour' if shape[0] < src[0] else ', full slices'}).
  Voxel values unchanged (int16 HU); the affine is the NRRD geometry converted from LPS to RAS
  and shifted to the crop start, so the crop sits at its original place in scanner space.
- Label: tumour = 1, unchanged values, same grid.

## nuclei.png, nuclei_label.png, nuclei_instances.png
- Source: PyPI `stardist==0.9.2` wheel, `stardist/data/images/img2d.tif` and `mask2d.tif`: a
  fluorescence microscopy image of nuclei from the 2018 Data Science Bowl (Caicedo et al., Nature
  Methods 16(12), 2019), as redistributed by stardist. Licence: BSD-3-Clause, Copyright 2018-2025
  Uwe Schmidt, Martin Weigert.
- Cut: nothing; whole {nuc['shape'][0]} x {nuc['shape'][1]} image. Intensities unchanged ({nuc['intensity']}).
  `nuclei_label.png` = mask > 0 (0/1); `nuclei_instances.png` = the instance ids as in the source
  (16-bit, {nuc['num_instances']} nuclei, ids not consecutive).

## samples.json
Per sample: files, modality, shape, labels, one example box (format stated in `box_format`) and
the exact source and crop.
""", encoding="utf-8")
    pyr = (sample_path("pyradiomics") / "LICENSE.txt").read_text(encoding="utf-8")
    sd = (sample_path("nuclei") / "LICENSE.txt").read_text(encoding="utf-8")
    (tmp / "LICENSE.txt").write_text(
        "lung2_ct_crop*.nii.gz: from pyradiomics 3.0.1 test data, BSD-3-Clause\n\n" + pyr
        + "\n" + "=" * 72 + "\n\nnuclei*.png: from stardist 0.9.2 test data, BSD-3-Clause\n\n"
        + sd, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=OUT, help=f"default: {OUT}")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".samples-") as tmp_name:
        tmp = Path(tmp_name)
        entries = {"lung2_ct_crop": make_lung2(tmp), "nuclei": make_nuclei(tmp)}
        write_texts(tmp, entries)
        total = sum(p.stat().st_size for p in tmp.iterdir())
        if total >= BUDGET_BYTES:
            sys.exit(f"bundled sample is {total} bytes, over the {BUDGET_BYTES} budget")
        for path in sorted(tmp.iterdir()):  # each file replaced atomically
            os.replace(path, out / path.name)
            print(f"{(out / path.name).stat().st_size:>9,d}  {out / path.name}")
    print(f"{total:>9,d}  total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
