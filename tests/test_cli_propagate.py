"""`segmote predict` on a volume: a 3-D box is followed from its middle slice by default,
--every-slice keeps the old behaviour, a one-slice prompt segments its slice or, with
--propagate, follows the object; bad combinations fail in one line (bundled real CT, real
LiteMedSAM + the default adapter)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from segmote.cli.main import main
from segmote.samples import bundled_sample_path

LUNG = bundled_sample_path("lung2_ct_crop")


def _slices(path) -> list[int]:
    label = np.asarray(nib.load(path).dataobj)
    return [int(k) for k in np.flatnonzero(label.any(axis=(0, 1)))]


def test_box3d_propagates_and_every_slice(tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "-q", "-i", str(LUNG), "-o", str(out),
                 "--box", "83,93,6,173,162,8"]) == 0
    assert _slices(out) == [6, 7, 8]  # the tumour runs through: followed to the box's ends
    every = tmp_path / "every.nii.gz"
    assert main(["predict", "-q", "-i", str(LUNG), "-o", str(every),
                 "--box", "83,93,6,173,162,8", "--every-slice"]) == 0
    assert _slices(every) == [6, 7, 8]
    one = tmp_path / "one.nii.gz"
    assert main(["predict", "-q", "-i", str(LUNG), "-o", str(one),
                 "--box", "83,93,7,173,162,7"]) == 0
    assert _slices(one) == [7]  # a one-slice prompt without --propagate: that slice only
    capsys.readouterr()


def test_one_slice_box_propagates(tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "-i", str(LUNG), "-o", str(out), "--box", "83,93,7,173,162,7",
                 "--propagate"]) == 0
    ks = _slices(out)
    assert 7 in ks and len(ks) > 5 and ks == list(range(ks[0], ks[-1] + 1))
    assert "slices per object" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--box", "83,93,6,173,162,8", "--every-slice", "--propagate"], "--every-slice"),
    (["--box", "83,93,6,173,162,8", "--key-slice", "12"], "outside the box's slices"),
    (["--point", "120,120,6", "--point", "120,130,8", "--propagate"], "one slice"),
])
def test_bad_combinations_fail_in_one_line(tmp_path, capsys, extra, needle):
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "-q", "-i", str(LUNG), "-o", str(out), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and not out.exists()


def test_propagate_needs_a_volume(tmp_path, capsys):
    nuclei = bundled_sample_path("nuclei")
    assert main(["predict", "-q", "-i", str(nuclei), "-o", str(tmp_path / "m.png"),
                 "--box", "10,10,50,50", "--propagate"]) == 1
    assert "2-D" in capsys.readouterr().err
