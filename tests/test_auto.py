"""Automatic (prompt-free) segmentation mechanics on a tiny random backbone: threshold
calibration, `Segmenter.predict(text=...)`, `predict_auto` label-map assembly, misuse errors.
(The real text encoder and the trained default adapter are tested in test_text.py and
test_default_adapter.py.)"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from segmote.adapter import AdapterCard, attach_adapter
from segmote.errors import InputError
from segmote.modeling.segmote import MoTEConfig
from segmote.modeling.text_ensemble import text_ensemble
from segmote.predict.auto import mask_offsets, text_beside_prompt
from segmote.predict.segmenter import Segmenter
from segmote.training.calibration import (OFFSETS, CalibrationCounts, choose_calibration,
                                          offset_dice, offset_nonempty)
from tiny_models import one_thread, tiny_sam  # noqa: F401  (one_thread: autouse fixture)

DIM = 12


def card(entries: dict) -> AdapterCard:
    """An adapter card as a file with these header entries would give."""
    return AdapterCard.from_metadata({"format": "segmote-adapter", **entries}, "test")


def with_calibration(old: AdapterCard, auto: dict) -> AdapterCard:
    return dataclasses.replace(old, calibration=card({"auto": auto}).calibration)


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
    c = CalibrationCounts(["a"])
    for conf in (0.9, 0.8, 0.7, 0.2):  # present classes, Dice 1 at every offset
        c.add_present("a", 1.0, conf)
    for conf, nonempty in ((0.6, True), (0.3, True), (0.1, True), (0.95, False)):
        c.add_absent("a", nonempty, conf)
    cal = choose_calibration(c, target_fp_rate=0.0)
    assert cal.threshold == pytest.approx(0.61)  # the bin above the 0.6 false positive
    assert cal.fp_rate == 0.0 and cal.fp_rate_raw == 0.75
    assert cal.dice == 0.75 and cal.dice_raw == 1.0  # the 0.2 present mask is dropped
    assert cal.mask_offset_default == 0.0 and cal.mask_offsets == {}  # no offset gains
    # two of four false positives allowed: only the one at 0.1 must go
    assert choose_calibration(c, target_fp_rate=0.5).threshold == pytest.approx(0.11)
    again = CalibrationCounts.from_array(c.array(), ["a"])
    assert choose_calibration(again, 0.0) == cal
    empty = choose_calibration(CalibrationCounts(["a"]))
    assert empty.threshold == 0.0 and empty.fp_rate is None


def test_offset_dice_and_nonempty_on_known_logits():
    logits = np.array([[[-0.6, -0.4], [0.3, -3.0]]], np.float32)  # (1, 2, 2)
    gt = np.array([[[True, True], [True, False]]])
    d = offset_dice(logits, gt)[0]
    at = {float(o): v for o, v in zip(OFFSETS, d)}
    assert at[0.0] == pytest.approx(2 * 1 / (1 + 3))  # only 0.3 is on
    assert at[0.5] == pytest.approx(2 * 2 / (2 + 3))  # -0.4 joins
    assert at[0.75] == pytest.approx(1.0)  # exactly the three target pixels
    assert at[2.0] == pytest.approx(2 * 3 / (3 + 3))
    assert at[-0.5] == pytest.approx(0.0)
    assert offset_nonempty(logits)[0].tolist() == [o > -0.3 for o in OFFSETS]


def test_offsets_are_chosen_per_class_and_shift_the_false_positives():
    """A class whose masks need +1 gets +1; the same class, but with an absent-class query
    that fires from +0.75 on, stops below that; a class that gains too little keeps 0; a class
    with no query gets the pooled default; false positives are counted at each class's own
    offset."""
    names = ["low", "fires", "flat", "unseen"]
    c = CalibrationCounts(names)
    peak = np.exp(-((OFFSETS - 1.0) ** 2))  # best Dice at +1, 0.37 at 0
    for conf in (0.9, 0.8):
        c.add_present("low", peak, conf)
        c.add_present("fires", peak, conf)
        c.add_present("flat", np.where(OFFSETS == 1.5, 0.505, 0.5), conf)  # gains < 0.01
    # an absent-class query whose peak logit is -0.6: non-empty from offset +0.75 on
    c.add_absent("fires", OFFSETS > 0.6, 0.3)
    c.add_absent("flat", OFFSETS > 0.6, 0.3)  # empty at its offset 0
    cal = choose_calibration(c, target_fp_rate=0.0)
    offsets = {n: cal.mask_offsets.get(n, cal.mask_offset_default) for n in names}
    # "fires" at +0.5: (2 x 0.78 + 1) / 3 = 0.85 beats +1: (2 x 1 + 0) / 3 = 0.67
    assert offsets == {"low": 1.0, "fires": 0.5, "flat": 0.0, "unseen": 0.5}
    # pooled over all 8 queries: +0.5 (6.1 / 8) beats +1 (5 / 8)
    assert cal.mask_offset_default == 0.5
    assert cal.mask_offsets == {"low": 1.0, "flat": 0.0}  # those differing from the default
    assert cal.fp_rate_raw == 0.0  # neither absent query fires at its class's offset
    assert cal.threshold == 0.0
    assert cal.dice_raw == pytest.approx((2 + 2 * np.exp(-0.25) + 2 * 0.5) / 6, abs=1e-4)
    assert cal.dice_no_offset == pytest.approx((4 * np.exp(-1) + 2 * 0.5) / 6, abs=1e-4)
    # a class whose absent query fires at its offset raises the confidence threshold
    c.add_absent("low", OFFSETS > 0.6, 0.3)
    again = choose_calibration(c, target_fp_rate=0.0)
    assert again.mask_offsets.get("low", again.mask_offset_default) == 0.5
    c.add_absent("low", OFFSETS > -1.0, 0.4)  # fires at every offset it could take
    assert choose_calibration(c, target_fp_rate=0.0).threshold == pytest.approx(0.41)


def test_text_beside_a_box_is_one_pooled_decision():
    c = CalibrationCounts(["helps", "hurts", "unseen"])
    c.add_box("helps", 0.70, 0.75)
    c.add_box("hurts", 0.80, 0.70)
    c.add_box("hurts", 0.80, 0.78)
    cal = choose_calibration(CalibrationCounts.from_array(c.array(), c.classes))
    # pooled: 2.23 with the text vs 2.30 without -> the box alone, for every class
    assert cal.text_beside_prompt_default is False and cal.text_beside_prompt == {}
    assert cal.box_dice == pytest.approx(2.3 / 3, abs=1e-4)
    assert cal.box_text_dice == pytest.approx(2.23 / 3, abs=1e-4)
    assert cal.box_text_dice_kept == pytest.approx(2.3 / 3, abs=1e-4)
    c.add_box("helps", 0.50, 0.65)  # now 2.88 vs 2.80: the text is used, for every class
    cal = choose_calibration(c)
    assert cal.text_beside_prompt_default is True and cal.text_beside_prompt == {}
    assert cal.box_text_dice_kept == pytest.approx(2.88 / 4, abs=1e-4)


def test_text_ensemble_averages_the_rows_that_use_the_text():
    torch.manual_seed(0)
    model = attach_adapter(tiny_sam(), "new", MoTEConfig(text_dim=DIM),
                           backbone="tiny", backbone_sha256="0" * 64).eval()
    image = model.prepare_image(model.encode(torch.rand(1, 3, 64, 64)))
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 50.0, 30.0]])
    text = HashEncoder().encode(["liver", "spleen"])
    with torch.no_grad():
        token = model.decode(image, boxes=boxes, text=text)
        plain = model.decode(image, boxes=boxes)
        both = text_ensemble(token, plain, torch.tensor([True, False]))
    assert not torch.equal(token.masks, plain.masks)  # the text token acts
    torch.testing.assert_close(both.masks[0], (token.masks[0] + plain.masks[0]) / 2)
    torch.testing.assert_close(both.iou_pred[0], (token.iou_pred[0] + plain.iou_pred[0]) / 2)
    assert torch.equal(both.masks[1], plain.masks[1])
    assert torch.equal(both.expert_index[:, 0], token.expert_index[:, 0])
    assert torch.equal(both.expert_index[:, 1], plain.expert_index[:, 1])
    assert torch.equal(text_ensemble(token, plain).masks[1],
                       (token.masks[1] + plain.masks[1]) / 2)


@pytest.fixture
def seg():
    torch.manual_seed(0)
    model = attach_adapter(tiny_sam(), "new", MoTEConfig(text_dim=DIM, ppt_queries=2),
                           backbone="tiny", backbone_sha256="0" * 64)
    model.card = card({"vocabulary": ["liver", "spleen", "kidney"],
                       "text": {"encoder": "hash", "template": "{}"}})
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


def test_calibrated_mask_offsets_shift_prompt_free_masks_only(seg):
    box = (5, 5, 30, 30)
    before = {n: seg.predict(text=n).logits for n in ("liver", "left kidney", "spleen")}
    boxed = seg.predict(box=box, text="liver").logits
    auto_before = seg.predict_auto(["liver", "spleen"], threshold=-10.0)
    seg.model.card = with_calibration(seg.model.card, {
        "threshold": 0.0, "mask_offset_default": -0.5,
        "mask_offsets": {"liver": 2.0, "Kidney_L": 1.0}})
    offsets = mask_offsets(seg.card, ["liver", "left kidney", "spleen"])
    assert offsets.tolist() == [2.0, 1.0, -0.5]
    after = seg.predict(text="liver")
    np.testing.assert_allclose(after.logits, before["liver"] + 2.0, atol=1e-5)
    assert np.array_equal(after.mask, after.logits > 0)
    np.testing.assert_allclose(seg.predict(text="left kidney").logits,
                               before["left kidney"] + 1.0, atol=1e-5)
    np.testing.assert_allclose(seg.predict(text="spleen").logits, before["spleen"] - 0.5,
                               atol=1e-5)
    # beside a box the text is averaged with the box alone: no offset
    np.testing.assert_array_equal(seg.predict(box=box, text="liver").logits, boxed)
    auto = seg.predict_auto(["liver", "spleen"], threshold=-10.0)
    assert (auto.label_map == 1).sum() >= (auto_before.label_map == 1).sum()
    assert np.array_equal(auto.label_map > 0, (before["liver"] + 2.0 > 0) |
                          (before["spleen"] - 0.5 > 0))


def test_text_beside_prompt_is_the_mean_with_the_box_alone(seg):
    boxes = np.array([[5, 5, 30, 30], [10, 8, 40, 35]], np.float32)
    plain = seg.predict(boxes=boxes)
    with_text = seg.predict(boxes=boxes, text=["liver", "spleen"])
    assert with_text.extras["text_used"].tolist() == [True, True]
    tb = torch.from_numpy(seg.geometry.boxes_to_input(boxes))
    with torch.inference_mode():
        token = seg.model.decode(seg.features, boxes=tb,
                                 text=seg.embed_text(["liver", "spleen"]))
    assert not torch.equal(token.masks, plain.lowres_logits)  # the text token acts
    torch.testing.assert_close(with_text.lowres_logits,
                               (token.masks + plain.lowres_logits) / 2)
    # older adapters chose per class: still honoured
    seg.model.card = with_calibration(seg.model.card, {
        "threshold": 0.0, "text_beside_prompt_default": True,
        "text_beside_prompt": {"Spleen": False}})
    used = text_beside_prompt(seg.card, ["liver", "spleen", "other"])
    assert used.tolist() == [True, False, True]
    mixed = seg.predict(boxes=boxes, text=["liver", "spleen"])
    assert mixed.extras["text_used"].tolist() == [True, False]
    np.testing.assert_array_equal(mixed.logits[0], with_text.logits[0])
    np.testing.assert_array_equal(mixed.logits[1], plain.logits[1])
    assert mixed.score[1] == plain.score[1] and mixed.score[0] == with_text.score[0]
    alone = seg.predict(box=boxes[1], text="spleen")  # off: exactly the box alone
    np.testing.assert_array_equal(alone.logits, seg.predict(box=boxes[1]).logits)
    # prompt-free use of the same class is not affected
    assert seg.predict(text="spleen").mask.shape == (40, 50)


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
    so this checks behaviour; held-out numbers are in docs/text_and_ppt.md), and its
    calibration (mask offsets and confidence threshold) travels with it."""
    from PIL import Image

    from segmote.build import load_model
    from segmote.io import read_image
    from segmote.samples import bundled_sample_path

    path = bundled_sample_path("nuclei")
    seg = Segmenter(load_model())
    assert seg.prompt_free and seg.takes_text
    auto = seg.card.calibration
    assert 0 <= auto.threshold < 1 and auto.raw["calibrated_on"] == "train"
    # calibrated on training slices: nuclei masks need a lower threshold (offset +0.75)
    assert mask_offsets(seg.card, ["nuclei"])[0] > 0
    seg.set_image(read_image(path).array)
    mask, score = seg.predict(text="nuclei")
    gt = np.asarray(Image.open(path.with_name("nuclei_label.png"))) > 0
    dice = 2 * (mask & gt).sum() / (mask.sum() + gt.sum())
    assert dice > 0.7, dice  # 0.78 when written (0.71 before the mask offsets)
    auto = seg.predict_auto(["nuclei"])
    assert auto.kept == {"nuclei": True} and np.array_equal(auto.label_map > 0, mask)
