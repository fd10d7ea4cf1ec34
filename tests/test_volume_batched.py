"""Batched volume inference (issue 22): in fp32 the label maps equal slice-by-slice prediction,
prompted (several objects: box, points, box + points; routing rows too) and prompt-free; and
`segmote predict --batch-size / --precision` through the CLI. Real weights (LiteMedSAM + the
shipped adapter), the bundled CT crop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import segmote
from segmote.io import read_image
from segmote.predict.batched import auto_volume_batched, segment_volume_batched
from segmote.predict.prompts import ObjectPrompt
from segmote.predict.volume import auto_volume, segment_volume
from segmote.routing import routing_table

CT = Path(segmote.__file__).parent / "assets" / "samples" / "lung2_ct_crop.nii.gz"


@pytest.fixture(scope="module")
def seg():
    return segmote.Segmenter(segmote.load_model())


@pytest.fixture(scope="module")
def slab():
    """Slices 6..8 of the bundled CT (3 slices: batches of 2 give a full one and a part)."""
    data = read_image(CT)
    return dataclasses.replace(data, array=np.ascontiguousarray(data.array[:, :, 6:9]))


def test_prompted_batched_equals_slice_by_slice(seg, slab) -> None:
    objects = [ObjectPrompt(1, box=(83, 93, 0, 173, 162, 2)),
               ObjectPrompt(2, points=[(120, 120, 0), (150, 130, 0), (100, 100, 2)],
                            point_labels=[1, 1, 1]),
               ObjectPrompt(3, box=(60, 60, 1, 110, 110, 2), points=[(90, 90, 1)],
                            point_labels=[0])]
    rows: dict[str, list] = {"one": [], "batched": []}

    def recorder(name):
        def record(n, k, pred):
            table = routing_table(pred.extras)[0]
            rows[name].append((n, k, table["selected_token"], table["experts"],
                               pred.mask.shape, round(float(pred.score), 4)))
        return record

    one = segment_volume(seg, slab, objects, 2, "CT", record=recorder("one"))
    batched = segment_volume_batched(seg, slab, objects, 2, "CT", record=recorder("batched"),
                                     batch_size=2)
    assert one.any() and set(np.unique(one)) >= {0, 1}
    assert np.array_equal(one, batched)
    assert rows["one"] == rows["batched"]  # the same rows, in the same order


def test_auto_batched_equals_slice_by_slice(seg, slab) -> None:
    classes = ["tumour", "nuclei"]
    one, names, kept = auto_volume(seg, slab, classes, 2, "CT")
    batched, names_b, kept_b = auto_volume_batched(seg, slab, classes, 2, "CT", batch_size=2)
    assert (names, kept) == (names_b, kept_b)
    assert np.array_equal(one, batched)


def test_cli_batch_size_and_precision(slab, tmp_path, capsys) -> None:
    """`segmote predict --batch-size --precision` on a volume: bf16 agrees with fp32 (the
    tumour box mask, Dice >= 0.98), same geometry; bad values: one line, nothing written."""
    from segmote.cli.main import main

    src = tmp_path / "slab.nii.gz"
    nib.save(nib.Nifti1Image(slab.array, slab.meta["affine"]), src)
    box = ["--box", "83,93,0,173,162,2", "--every-slice", "--modality", "CT", "-q"]
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.nii.gz"
        assert main(["predict", "-i", str(src), "-o", str(out), *box, "--batch-size", "2",
                     "--precision", precision]) == 0
        outs[precision] = nib.load(out)
    a, b = (np.asarray(o.dataobj) > 0 for o in outs.values())
    assert a.sum() > 1000 and 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.98
    assert np.allclose(outs["bf16"].affine, outs["fp32"].affine)
    capsys.readouterr()
    bad = tmp_path / "bad.nii.gz"
    assert main(["predict", "-i", str(src), "-o", str(bad), *box, "--batch-size", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size 0" in err and not bad.exists()
