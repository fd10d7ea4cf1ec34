"""Automatic (prompt-free) segmentation mechanics on a tiny random backbone: threshold
calibration, `Segmenter.predict(text=...)`, `predict_auto` label-map assembly, misuse errors.
(The real text encoder and the trained default adapter are tested in test_text.py and
test_default_adapter.py.)"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from segmote.adapter import attach_adapter
from segmote.errors import InputError
from segmote.modeling.segmote import MoTEConfig
from segmote.predictor import Segmenter
from segmote.training.calibration import CalibrationCounts, choose_threshold
from tiny_models import one_thread, tiny_sam  # noqa: F401  (one_thread: autouse fixture)

DIM = 12


class HashEncoder:
    """A stand-in text encoder for the tiny model: a fixed unit vector per text."""

    id, dim = "hash-test", DIM

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
            rows.append(v / v.norm())
        return torch.stack(rows)


def test_threshold_is_the_lowest_meeting_the_false_positive_target():
    c = CalibrationCounts()
    for conf in (0.9, 0.8, 0.7, 0.2):  # present classes, Dice 1 each
        c.add_present(1.0, conf)
    for conf, nonempty in ((0.6, True), (0.3, True), (0.1, True), (0.95, False)):
        c.add_absent(nonempty, conf)
    cal = choose_threshold(c, target_fp_rate=0.0)
    assert cal.threshold == pytest.approx(0.61)  # the bin above the 0.6 false positive
    assert cal.fp_rate == 0.0 and cal.fp_rate_raw == 0.75
    assert cal.dice == 0.75 and cal.dice_raw == 1.0  # the 0.2 present mask is dropped
    # two of four false positives allowed: only the one at 0.1 must go
    assert choose_threshold(c, target_fp_rate=0.5).threshold == pytest.approx(0.11)
    again = CalibrationCounts.from_array(c.array())
    assert choose_threshold(again, 0.0) == cal
    empty = choose_threshold(CalibrationCounts())
    assert empty.threshold == 0.0 and empty.fp_rate is None


@pytest.fixture
def seg():
    torch.manual_seed(0)
    model = attach_adapter(tiny_sam(), "new", MoTEConfig(text_dim=DIM, ppt_queries=2),
                           backbone="tiny", backbone_sha256="0" * 64)
    model.adapter_metadata = {"vocabulary": ["liver", "spleen", "kidney"],
                              "text": {"encoder": "hash", "template": "{}"}}
    s = Segmenter(model, text_encoder=HashEncoder())
    s.set_image(np.random.default_rng(0).random((40, 50)).astype(np.float32))
    return s


def test_text_prompts_and_auto_label_map(seg):
    mask, score = seg.predict(text="liver")  # prompt-free, one class
    assert mask.shape == (40, 50) and isinstance(score, float)
    assert seg.predict(box=(5, 5, 30, 30), text="liver").mask.shape == (40, 50)
    two = seg.predict(text=["liver", "spleen"])
    assert two.mask.shape == (2, 40, 50)
    assert seg.text_encoder.calls == 2  # "liver" was embedded once, then cached
    everything = seg.predict_auto(threshold=-10.0)
    assert everything.classes == ["liver", "spleen", "kidney"]
    assert everything.label_map.shape == (40, 50) and everything.label_map.max() <= 3
    # each labelled pixel is one whose class mask is on
    for i, name in enumerate(everything.classes, 1):
        single = seg.predict(text=name).mask
        assert not (everything.label_map == i)[~single].any()
    nothing = seg.predict_auto(["liver"], threshold=10.0)
    assert not nothing.label_map.any() and nothing.kept == {"liver": False}


def test_misuse(seg):
    plain = Segmenter(attach_adapter(tiny_sam(), "new", backbone="tiny",
                                     backbone_sha256="0" * 64))
    plain.set_image(np.zeros((20, 20), np.float32))
    with pytest.raises(InputError, match="no PPT"):
        plain.predict()
    with pytest.raises(InputError, match="no text prompts"):
        plain.predict(box=(1, 1, 5, 5), text="liver")
    with pytest.raises(InputError, match="PPT and text"):
        plain.predict_auto(["liver"])
    with pytest.raises(InputError, match="empty"):
        seg.predict(text=" ")
    with pytest.raises(InputError, match="2 text prompts for 3"):
        seg.predict(boxes=np.array([[1, 1, 5, 5]] * 3, np.float32), text=["a", "b"])


def test_shipped_adapter_segments_nuclei_from_the_class_name_alone():
    """The shipped default adapter (real LiteMedSAM weights) takes text and PPT: "nuclei" with no
    other prompt segments the bundled DSB 2018 image (three quarters of it were training data,
    so this checks behaviour; held-out numbers are in docs/text_and_ppt.md), and a calibrated
    threshold travels with it."""
    from PIL import Image

    from segmote.build import load_model
    from segmote.io import read_image
    from segmote.samples import bundled_sample_path

    path = bundled_sample_path("nuclei")
    seg = Segmenter(load_model())
    assert seg.prompt_free and seg.takes_text
    assert 0 < seg.model.adapter_metadata["auto"]["threshold"] < 1
    seg.set_image(read_image(path).array)
    mask, score = seg.predict(text="nuclei")
    gt = np.asarray(Image.open(path.with_name("nuclei_label.png"))) > 0
    dice = 2 * (mask & gt).sum() / (mask.sum() + gt.sum())
    assert dice > 0.6, dice  # 0.71 when written
    auto = seg.predict_auto(["nuclei"])
    assert auto.kept == {"nuclei": True} and np.array_equal(auto.label_map > 0, mask)
