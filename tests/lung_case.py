"""The bundled lung CT crop, a tiny nnU-Net dataset cut from it (fixture) and the tiny training
settings shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import segmote

ASSETS = Path(segmote.__file__).parent / "assets" / "samples"
CT, LABEL = ASSETS / "lung2_ct_crop.nii.gz", ASSETS / "lung2_ct_crop_label.nii.gz"
PLAIN = dict(text_encoder="none", ppt_queries=0)  # an adapter without text prompts and PPT
TINY = dict(epochs=1, batch_size=2, refine_rounds=1, refine_clicks=[1, 3], log_every=1,
            save_every=1, min_foreground=200, val_fraction=0.5)


@pytest.fixture(scope="module")
def lung_dataset(tmp_path_factory) -> Path:
    """Dataset001_Lung in nnU-Net raw layout: three 'cases', each a 2-slice slab of the bundled
    CT whose second slice has its label cleared (so each case gives exactly one training slice:
    three slices to encode in all, which keeps the CPU test short)."""
    root = tmp_path_factory.mktemp("raw") / "Dataset001_Lung"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    ct_img, lab_img = nib.load(CT), nib.load(LABEL)
    ct, lab = np.asarray(ct_img.dataobj), np.asarray(lab_img.dataobj)
    for n, k in enumerate((5, 8, 10)):
        slab_lab = lab[..., k:k + 2].copy()
        slab_lab[..., 1] = 0
        nib.save(nib.Nifti1Image(ct[..., k:k + 2], ct_img.affine),
                 root / "imagesTr" / f"lung_{n:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(slab_lab, lab_img.affine),
                 root / "labelsTr" / f"lung_{n:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    return root
