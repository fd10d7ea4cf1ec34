"""Mixed precision, part 2 (issue 22): the real model (LiteMedSAM + the shipped adapter) on the
bundled samples under each mode of `autocast_modes.MODES`: prompted decode (box), prompt-free
decode (text alone) and `predict_auto`; the low-precision masks agree with fp32 (Dice >= 0.98).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import segmote
from autocast_modes import MODES, mode_autocast, mode_device

# CPU fp16 autocast is no deployment mode (no fast fp16 kernels on CPUs) and slow here: the
# tiny-model steps of test_autocast.py cover it
REAL_MODES = [m for m in MODES if m.values[0] != "cpu-fp16"]

ASSETS = Path(segmote.__file__).parent / "assets" / "samples"
CT_SLICES = (7, 10)
CT_BOX = (83, 93, 173, 162)  # the sample's 3-D box in the slice plane (x = i, y = j)
AUTO_CLASSES = ["tumour", "nuclei", "Caudate_L"]


def _images() -> dict[str, Any]:
    ct = np.asarray(nib.load(ASSETS / "lung2_ct_crop.nii.gz").dataobj)
    nuclei = np.asarray(Image.open(ASSETS / "nuclei.png"))
    inst = np.asarray(Image.open(ASSETS / "nuclei_instances.png"))
    ids, sizes = np.unique(inst[inst > 0], return_counts=True)
    boxes = []
    for i in ids[np.argsort(sizes)[-12:]]:  # the 12 largest nuclei: a box each
        ys, xs = np.nonzero(inst == i)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
    return {"ct": [ct[:, :, k].T for k in CT_SLICES], "nuclei": nuclei,
            "nuclei_boxes": np.array(boxes, np.float32)}


def _run(seg: Any, images: dict[str, Any], context: Any) -> dict[str, np.ndarray]:
    """Every decode of the checks, under `context`: masks (bool) and the auto label map."""
    out: dict[str, Any] = {"ct_box": [], "ct_text": []}
    with context():
        for k, image in enumerate(images["ct"]):
            seg.set_image(image, modality="CT")
            out["ct_box"].append(seg.predict(box=CT_BOX).mask)
            out["ct_text"].append(seg.predict(text="tumour").mask)
            if k == 0:
                out["ct_auto"] = seg.predict_auto(AUTO_CLASSES).label_map
        seg.set_image(images["nuclei"])
        out["nuclei_box"] = seg.predict(boxes=images["nuclei_boxes"]).mask
        out["nuclei_text"] = seg.predict(text="nuclei").mask
        out["nuclei_auto"] = seg.predict_auto(AUTO_CLASSES).label_map
    return {k: np.asarray(v) for k, v in out.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean arrays; 1 when both are empty."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


@pytest.fixture(scope="module")
def reference() -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """The shipped model, the images and the fp32 results (the text embeddings are computed
    here, in fp32, and cached by the Segmenter for every mode)."""
    seg = segmote.Segmenter(segmote.load_model())
    seg.embed_text(AUTO_CLASSES)
    images = _images()
    return seg, images, _run(seg, images, contextlib.nullcontext)


@pytest.mark.parametrize("mode", REAL_MODES)
def test_low_precision_masks_agree_with_fp32(reference, mode: str) -> None:
    seg, images, ref = reference
    dev = mode_device(mode)
    if seg.device != dev:
        seg = segmote.Segmenter(seg.model.to(dev))
        seg.embed_text(AUTO_CLASSES)
    got = _run(seg, images, mode_autocast(mode))
    scores = {}
    for key, want in ref.items():
        if key.endswith("_auto"):  # label maps: Dice of each class's pixels
            for value in np.unique(want[want > 0]):
                scores[f"{key}:{AUTO_CLASSES[value - 1]}"] = dice(got[key] == value,
                                                                  want == value)
            assert set(np.unique(got[key])) == set(np.unique(want)), key
        else:
            assert want.any(), f"{key}: the fp32 reference is empty (a check that cannot fail)"
            scores[key] = dice(got[key], want)
    low = {k: round(v, 4) for k, v in scores.items() if v < 0.98}
    assert not low, f"{mode}: Dice vs fp32 below 0.98: {low} (all: {scores})"
