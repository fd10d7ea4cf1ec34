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
import torch

import segmote
from segmote.io import read_image
from segmote.precision import autocast
from segmote.predict.batched import EncodedSlices, auto_volume_batched, segment_volume_batched
from segmote.predict.propagation import propagate, propagation_order, volume_setter
from segmote.predict.prompts import ObjectPrompt
from segmote.predict.volume import auto_volume, segment_volume
from segmote.routing import routing_table
from segmote.slicing import volume_slice

CT = Path(segmote.__file__).parent / "assets" / "samples" / "lung2_ct_crop.nii.gz"


@pytest.fixture(scope="module")
def seg():
    return segmote.Segmenter(segmote.load_model())


@pytest.fixture(scope="module")
def slabs():
    """Slices 3..10 of the bundled CT (8 slices: every batch size below ends in a part batch
    but 1, 2, 4 and 8, which split it evenly)."""
    data = read_image(CT)
    return dataclasses.replace(data, array=np.ascontiguousarray(data.array[:, :, 3:11]))


@pytest.fixture(scope="module")
def slab():
    """Slices 6..8 of the bundled CT (3 slices: batches of 2 give a full one and a part)."""
    data = read_image(CT)
    return dataclasses.replace(data, array=np.ascontiguousarray(data.array[:, :, 6:9]))


OBJECTS = [ObjectPrompt(1, box=(83, 93, 0, 173, 162, 7)),
           ObjectPrompt(2, points=[(120, 120, 0), (150, 130, 0), (100, 100, 5)],
                        point_labels=[1, 1, 1]),
           ObjectPrompt(3, box=(60, 60, 1, 110, 110, 6), points=[(90, 90, 1)],
                        point_labels=[0])]


def test_prompted_batched_equals_slice_by_slice(seg, slabs) -> None:
    """fp32, batches of 1, 2, 3, 4 and 8 slices: the label maps and the routing rows (in the
    same order) of slice by slice, bit for bit. Decoding a batch's prompts in one call broke
    this at batch 4 (the per-prompt matmuls of the prompt encoder and hypernetworks take a
    different kernel when they have more than one row): fp32 decodes each prompt alone."""
    rows: dict[object, list] = {}

    def recorder(name):
        def record(n, k, pred):
            table = routing_table(pred.extras)[0]
            rows.setdefault(name, []).append((n, k, table["selected_token"], table["experts"],
                                              pred.mask.shape, float(pred.score)))
        return record

    one = segment_volume(seg, slabs, OBJECTS, 2, "CT", record=recorder("one"))
    assert set(np.unique(one)) >= {0, 1, 2} and len(rows["one"]) == 8 + 2 + 6
    for size in (1, 2, 3, 4, 8):
        batched = segment_volume_batched(seg, slabs, OBJECTS, 2, "CT", record=recorder(size),
                                         batch_size=size)
        assert np.array_equal(one, batched), f"batch_size {size}"
        assert rows[size] == rows["one"], f"batch_size {size}"


def test_auto_batched_equals_slice_by_slice(seg, slab) -> None:
    classes = ["tumour", "nuclei"]
    one, names, kept = auto_volume(seg, slab, classes, 2, "CT")
    batched, names_b, kept_b = auto_volume_batched(seg, slab, classes, 2, "CT", batch_size=2)
    assert (names, kept) == (names_b, kept_b)
    assert np.array_equal(one, batched)


def test_propagation_encoded_ahead_equals_slice_by_slice(seg, monkeypatch) -> None:
    """`EncodedSlices` (batches of 3 encoded in a background thread along the propagation's
    order) gives the propagated masks and scores of `volume_setter` (each slice encoded when
    visited), also where the propagation turns before the order's end (here the slice range
    stops it at 3 while the order goes on to 0: the encoding restarts at 8)."""
    vol = read_image(CT).array
    box = (83, 93, 173, 162)
    one = propagate(seg, volume_setter(seg, vol, 2, "CT"), vol.shape, 7, {"box": box},
                    k_range=(3, 14), bound=box)
    sizes, encode = [], seg.model.encode

    def spy(x):
        sizes.append(x.shape[0])
        return encode(x)

    monkeypatch.setattr(seg.model, "encode", spy)
    with EncodedSlices(seg, vol, 2, "CT", batch_size=3, background=True) as slices:
        ahead = propagate(seg, slices.follow(propagation_order(7, 0, 14)), vol.shape, 7,
                          {"box": box}, k_range=(3, 14), bound=box)
    assert np.array_equal(one.mask, ahead.mask) and one.scores == ahead.scores
    assert one.slices[0] == 3 and one.slices[-1] > 8  # it turned at 3 and went on upwards
    assert 3 in sizes and sum(sizes) <= 15 + 2 * 3  # batched; at most a batch wasted per turn
    four = volume_slice(vol, 4, 2)
    seg.set_image(four, modality="CT")
    fp32 = seg.features
    with autocast("bf16", seg.device):
        seg.set_image(four, modality="CT")
        bf16 = seg.features
        with EncodedSlices(seg, vol, 2, "CT", background=True) as s:
            s.follow([4])(4)  # the encoder thread runs under the caller's autocast
    assert all(torch.equal(a, b) for a, b in zip(seg.features, bf16))
    assert not all(torch.equal(a, b) for a, b in zip(fp32, bf16))
    seg.reset_image()


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


def test_cli_propagation_encodes_ahead(tmp_path, capsys, monkeypatch) -> None:
    """`segmote predict` follows a 3-D box with the slices encoded ahead (`EncodedSlices`):
    at --batch-size 3 the label map is that of batch 1 (each slice encoded when visited),
    batches of 3 reach the encoder, and a NaN voxel is still kept out of the intensity
    statistics as slice by slice keeps it out (the finite mask goes along)."""
    from segmote.cli.main import main

    data = read_image(CT)
    vol = data.array.astype(np.float32)
    vol[0, 0, 5] = np.nan
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, data.meta["affine"]), src)
    from segmote.modeling.segmote import SegMoTE

    sizes, real = [], SegMoTE.encode

    def spy(self, x):
        sizes.append(x.shape[0])
        return real(self, x)

    monkeypatch.setattr(SegMoTE, "encode", spy)
    maps = {}
    for b in (1, 3):
        out = tmp_path / f"b{b}.nii.gz"
        assert main(["predict", "-q", "-i", str(src), "-o", str(out), "--engine", "torch",
                     "--box", "83,93,2,173,162,12", "-m", "CT", "--batch-size", str(b)]) == 0
        maps[b] = np.asarray(nib.load(out).dataobj)
    capsys.readouterr()
    assert maps[1].any() and np.array_equal(maps[1], maps[3])
    assert 3 in sizes and set(sizes) <= {1, 2, 3}
    # the same box slice by slice through the Python API (no batching, set_image per slice)
    seg = segmote.Segmenter(segmote.load_model())
    one = segment_volume(seg, read_image(src), [ObjectPrompt(box=(83, 93, 2, 173, 162, 12))],
                         modality="CT", propagate=True)
    assert np.array_equal(one > 0, maps[1] > 0)
