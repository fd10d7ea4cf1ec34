"""Every output option of `segmote predict` with every prompt kind, on a 2-D image and a 3-D
volume (issue 21, case 13: `--text` / `--auto` with `--overlay` on a 2-D image crashed with an
IndexError, and no test combined them), and outputs written together or not at all (case 11).

One real model (LiteMedSAM + the shipped adapter) is loaded once and shared by all runs; the
inputs are small real images (the bundled nuclei image, two slices of the bundled lung CT;
prompts on one of them, so that most runs encode one slice).
"""

from __future__ import annotations

import errno
import functools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import segmote.predict.pipeline as pipeline
from segmote.cli.main import main
from segmote.errors import InputError
from segmote.io import LabelInfo
from segmote.samples import bundled_sample_path

PROMPTS = {  # kind -> (2-D flags, 3-D flags)
    "box": (["--box", "416,350,446,374"], ["--box", "83,93,1,173,162,1"]),
    "point": (["--point", "430,362"], ["--point", "128,127,1"]),
    "box+text": (["--box", "416,350,446,374", "--text", "nuclei"],
                 ["--box", "83,93,1,173,162,1", "--text", "tumour"]),
    "text": (["--text", "nuclei"], ["--text", "tumour"]),
    "auto": (["--auto", "--classes", "nuclei"], ["--auto", "--classes", "tumour"]),
}
OUTPUTS = {"label only": [], "overlay": ["--overlay", "o.png"],
           "attention": ["--attention", "a.png"], "routing": ["--routing"]}
PROMPT_FREE = ("text", "auto")


@pytest.fixture(scope="module")
def shared_model():
    """The real `load_model`, each model loaded once for the whole module."""
    return functools.lru_cache(maxsize=2)(pipeline.load_model)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    Image.open(bundled_sample_path("nuclei")).save(root / "cells.png")
    ct = nib.load(bundled_sample_path("lung2_ct_crop"))
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[:, :, 7:9], ct.affine), root / "ct.nii.gz")
    return {"2-D": root / "cells.png", "3-D": root / "ct.nii.gz"}


@pytest.mark.parametrize("dims", ["2-D", "3-D"])
@pytest.mark.parametrize("output", list(OUTPUTS))
@pytest.mark.parametrize("kind", list(PROMPTS))
def test_every_output_with_every_prompt(kind, output, dims, inputs, shared_model, tmp_path,
                                        monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "load_model", shared_model)
    monkeypatch.chdir(tmp_path)
    src = inputs[dims]
    before = src.read_bytes()
    out = "seg.nii.gz" if dims == "3-D" else "seg.png"
    flags = PROMPTS[kind][dims == "3-D"] + OUTPUTS[output]
    rc = main(["predict", "-i", str(src), "-o", out, "-q", *flags])
    stdout, stderr = capsys.readouterr()
    assert src.read_bytes() == before
    if kind in PROMPT_FREE and output in ("attention", "routing"):
        assert rc == 1 and stderr.count("\n") == 1 and "prompt-free" in stderr, stderr
        assert list(tmp_path.iterdir()) == []
        return
    assert rc == 0 and "Traceback" not in stderr, stderr
    written = {p.name for p in tmp_path.iterdir()}
    figure = {"overlay": "o.png", "attention": "a.png"}.get(output)
    # the ITK-SNAP label-names file beside a NIfTI map of named classes
    names = {"seg_labels.txt"} if dims == "3-D" and kind in ("box+text", "text", "auto") else set()
    assert written == {out} | names | ({figure} if figure else set()), written
    label = nib.load(out).get_fdata() if dims == "3-D" else np.asarray(Image.open(out))
    assert label.shape == (nib.load(src).shape if dims == "3-D" else (512, 512))
    if figure:
        assert Image.open(figure).format == "PNG"
    if output == "routing":
        assert "expert" in stdout.lower(), stdout


def test_a_failing_figure_leaves_no_label_map(tmp_path, inputs):
    """A full disk while the overlay is written: neither the label map nor the overlay appears
    (the label map used to stay behind)."""
    from segmote.io import read_image

    data = read_image(inputs["2-D"])
    outputs = {"label map": tmp_path / "m.png", "overlay": tmp_path / "o.png"}

    def full_disk(path: Path) -> None:
        path.write_bytes(b"\\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(InputError, match="m.png: cannot write the outputs \\(No space left"):
        pipeline._write_outputs(outputs, np.zeros((512, 512), np.uint8), data, LabelInfo(),
                                {"overlay": full_disk})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("before", ["no label map", "an older label map"])
def test_a_failing_figure_rename_restores_the_label_map(tmp_path, inputs, monkeypatch, before):
    """The overlay's folder turns read-only after the label map was written (its rename is the
    last step): the label map written in this run is removed again, or the one there before
    comes back (it used to stay, beside no overlay)."""
    import os

    from segmote.io import read_image

    data = read_image(inputs["2-D"])
    (tmp_path / "figs").mkdir()
    outputs = {"label map": tmp_path / "m.png", "overlay": tmp_path / "figs" / "o.png"}
    if before == "an older label map":
        outputs["label map"].write_bytes(b"older")
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(outputs["overlay"]):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(InputError, match=r"o.png: cannot write the output \(Read-only file "):
        pipeline._write_outputs(outputs, np.zeros((512, 512), np.uint8), data, LabelInfo(),
                                {"overlay": lambda path: path.write_bytes(b"png")})
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    if before == "no label map":
        assert left == []
    else:
        assert left == ["m.png"] and outputs["label map"].read_bytes() == b"older"
