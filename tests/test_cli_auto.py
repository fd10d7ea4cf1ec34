"""`segmote predict --text / --auto` end to end with the real LiteMedSAM and the real text
encoder, on an adapter with PPT and text prompts: outputs keep the input's geometry, bad
requests fail with one line and write nothing. (What a *trained* adapter achieves is measured in
benchmarks/bench_auto.py; here the adapter is a fresh one saved to disk.)"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from segmote.cli.main import main
from segmote.io import read_image
from segmote.samples import bundled_sample_path, bundled_samples

LUNG = bundled_sample_path("lung2_ct_crop")
NUCLEI = bundled_sample_path("nuclei")
NUCLEI_BOX = ",".join(map(str, bundled_samples()["nuclei"]["box"]))


def _fresh_adapter(path, **meta):
    """Save a fresh PPT + text adapter (the training defaults) knowing nuclei and tumour, with a
    calibrated threshold below every confidence, so tests see the raw automatic masks."""
    import torch

    from segmote.adapter import save_adapter
    from segmote.text.classes import class_embeddings
    from segmote.training.config import load_config
    from segmote.training.trainer import build_model

    texts = class_embeddings(["tumour", "nuclei"])
    model = build_model(load_config(), torch.device("cpu"), texts.dim)
    save_adapter(model, path, {"vocabulary": ["nuclei", "tumour"], "text": texts.metadata(),
                               "auto": {"threshold": -100.0}, **meta})
    return path


@pytest.fixture(scope="module")
def ppt_adapter(tmp_path_factory):
    return _fresh_adapter(tmp_path_factory.mktemp("adapter") / "ppt.safetensors")


@pytest.fixture(scope="module")
def modality_adapter(tmp_path_factory):
    """With the metadata a training run writes about its data: nuclei from a microscopy
    dataset, tumour from a CT one."""
    return _fresh_adapter(tmp_path_factory.mktemp("adapter") / "modal.safetensors",
                          training_data={"cells": ["nuclei"], "lungs": ["tumour"]},
                          training_modalities={"cells": "MICROSCOPY", "lungs": "CT"})


def _run(args, capsys):
    rc = main(["predict", "-q"] + args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_auto_volume_keeps_geometry(ppt_adapter, tmp_path, capsys):
    out = tmp_path / "auto.nii.gz"
    rc, _, err = _run(["-i", str(LUNG), "-o", str(out), "--auto", "--adapter", str(ppt_adapter),
                       "--classes", "tumour,nuclei"], capsys)
    assert rc == 0, err
    ref, seg = nib.load(LUNG), nib.load(out)
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


def test_auto_without_classes_warns_and_asks_for_every_class(ppt_adapter, tmp_path, capsys):
    out = tmp_path / "all.png"
    rc, _, err = _run(["-i", str(NUCLEI), "-o", str(out), "--auto", "--adapter",
                       str(ppt_adapter)], capsys)
    assert rc == 0, err
    assert "note: --auto without --classes" in err and "--classes" in err
    assert set(np.unique(read_image(out).array)) <= {0, 1, 2}  # nuclei, tumour
    rc, _, err = _run(["-i", str(NUCLEI), "-o", str(out), "--auto", "--adapter",
                       str(ppt_adapter), "--classes", "nuclei"], capsys)
    assert rc == 0 and "note:" not in err


def test_auto_asks_only_the_classes_trained_on_the_images_modality(modality_adapter, tmp_path,
                                                                    capsys):
    from segmote.predict.pipeline import PredictOptions, predict_file

    def auto(**kw) -> PredictOptions:
        return PredictOptions(auto=True, adapter=modality_adapter, **kw)

    # a CT volume (modality told by its Hounsfield units): only the CT dataset's class
    ct = predict_file(LUNG, tmp_path / "ct.nii.gz", options=auto())
    assert ct.auto_modality == "CT" and ct.classes == {1: "tumour"}
    assert set(np.unique(ct.label)) <= {0, 1} and "CT classes" in ct.summary
    # a PNG says nothing of its modality: every class, unless --modality names one
    png = predict_file(NUCLEI, tmp_path / "all.png", options=auto())
    assert png.auto_modality is None and png.classes == {1: "nuclei", 2: "tumour"}
    cells = predict_file(NUCLEI, tmp_path / "cells.png", options=auto(modality="microscopy"))
    assert cells.auto_modality == "MICROSCOPY" and cells.classes == {1: "nuclei"}
    # a modality the adapter never trained on: every class again (nothing to go by)
    mr = predict_file(NUCLEI, tmp_path / "mr.png", options=auto(modality="MR"))
    assert mr.auto_modality is None and len(mr.classes) == 2
    # the CLI's note comes only when every class was asked
    rc, _, err = _run(["-i", str(NUCLEI), "-o", str(tmp_path / "c.png"), "--auto", "-m",
                       "microscopy", "--adapter", str(modality_adapter)], capsys)
    assert rc == 0 and "note:" not in err, err


def test_shipped_adapter_asks_the_classes_of_the_modality_given(tmp_path, capsys):
    # the shipped adapter's header records its datasets' modalities: a microscopy image asks
    # for nuclei only (it asked all 119 classes before), and the CLI has no note to print
    from segmote.predict.pipeline import PredictOptions, predict_file

    out = tmp_path / "cells.png"
    rc, _, err = _run(["-i", str(NUCLEI), "-o", str(out), "--auto", "-m", "microscopy"], capsys)
    assert rc == 0 and "note:" not in err, err
    assert set(np.unique(read_image(out).array)) <= {0, 1}
    cells = predict_file(NUCLEI, tmp_path / "cells2.png",
                         options=PredictOptions(auto=True, modality="microscopy"))
    assert cells.auto_modality == "MICROSCOPY" and cells.classes == {1: "nuclei"}
    assert "of 1 classes (the adapter's MICROSCOPY classes)" in cells.summary


def test_text_alone_and_text_with_a_box_on_2d(ppt_adapter, tmp_path, capsys):
    # the overlay of a prompt-free 2-D result (it once asked a 2-D image for its slice axis)
    for extra in (["--text", "nuclei", "--label", "7", "--overlay", str(tmp_path / "o.png")],
                  ["--text", "nuclei", "--box", NUCLEI_BOX]):
        out = tmp_path / "m.png"
        rc, _, err = _run(["-i", str(NUCLEI), "-o", str(out), "--adapter", str(ppt_adapter),
                           *extra], capsys)
        assert rc == 0, err
        mask = read_image(out).array
        assert mask.shape == read_image(NUCLEI).array.shape
        assert set(np.unique(mask)) <= ({0, 7} if "--label" in extra else {0, 1})
    assert (tmp_path / "o.png").is_file()


@pytest.mark.parametrize("extra, needle", [
    (["--auto", "--box", NUCLEI_BOX], "drop --box"),
    (["--classes", "nuclei"], "--classes goes with --auto"),
    (["--auto", "--adapter", "none"], "need a SegMoTE adapter"),
    (["--text", " "], "empty class name"),
])
def test_bad_requests_one_line_nothing_written(tmp_path, capsys, extra, needle):
    out = tmp_path / "m.png"
    rc, _, err = _run(["-i", str(NUCLEI), "-o", str(out), *extra], capsys)
    assert rc == 1 and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_adapter_without_ppt_is_refused(tmp_path, capsys):
    from segmote.adapter import save_adapter
    from segmote.build import load_model

    plain = save_adapter(load_model(adapter="new"), tmp_path / "plain.safetensors")
    rc, _, err = _run(["-i", str(NUCLEI), "-o", str(tmp_path / "m.png"), "--auto",
                       "--adapter", str(plain)], capsys)
    assert rc == 1 and "without PPT" in err and not (tmp_path / "m.png").exists()
