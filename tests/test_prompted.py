"""Fixed prompt protocols (box, jittered box, central point, corrective clicks) and prompted
evaluation: deterministic prompts keyed by the sample, base vs adapter from one decode, Dice at
the original size, cached and uncached features agreeing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segmote.adapter import attach_adapter
from segmote.data.cache import EmbeddingCache
from segmote.data.datasets import discover, slice_samples
from segmote.errors import InputError
from segmote.evaluation.prompted import (Protocol, corrective_click, deepest_point, dice,
                                         evaluate_samples, padded_box, sample_seed,
                                         summarize_results)
from segmote.simulated_prompts import jittered_box
from tiny_models import one_thread, tiny_sam  # noqa: F401  (one_thread: autouse fixture)

MR = "pyradiomics/Dataset002_PyradiomicsMR"


def test_box_point_and_click_geometry():
    m = np.zeros((20, 30), bool)
    m[5:10, 8:20] = True  # rows 5..9, cols 8..19
    assert padded_box(m, 2).tolist() == [6, 3, 21, 11]
    assert padded_box(m, 50).tolist() == [0, 0, 29, 19]  # clamped to the image
    x, y = deepest_point(m)
    assert m[int(y), int(x)] and y == 7  # the middle row of the 5-row bar
    edge = np.zeros((5, 5), bool)
    edge[:, :2] = True  # touching the border: outside counts as boundary
    assert deepest_point(edge)[0] in (0.0, 1.0)
    a = sample_seed(0, _S("d", "c", 3, 1))
    b = sample_seed(0, _S("d", "c", 3, 1))
    c = sample_seed(0, _S("d", "c", 4, 1))
    ba, bb = jittered_box(m, a, 0.2), jittered_box(m, b, 0.2)
    assert np.array_equal(ba, bb) and not np.array_equal(ba, jittered_box(m, c, 0.2))
    assert (ba[:2] <= ba[2:]).all() and ba.min() >= 0 and ba[2] <= 29 and ba[3] <= 19
    # a prediction missing the right part of the bar: the click is positive, in the miss
    pred = m.copy()
    pred[:, 15:] = False
    rng = np.random.default_rng(0)
    (cx, cy), label = corrective_click(pred, m, rng)
    assert label == 1 and cx >= 15 and m[int(cy), int(cx)]
    fp = m.copy()
    fp[12:19, 0:10] = True
    (cx, cy), label = corrective_click(fp, m, rng)
    assert label == 0 and not m[int(cy), int(cx)] and fp[int(cy), int(cx)]
    assert corrective_click(m, m, rng) is None
    assert dice(m, m) == 1.0 and dice(m, ~m) == 0.0 and dice(m & False, m & False) == 1.0
    with pytest.raises(InputError):
        Protocol("lasso")


class _S:
    def __init__(self, dataset, case_id, slice_index, class_value):
        self.dataset, self.case_id = dataset, case_id
        self.slice_index, self.class_value = slice_index, class_value


@pytest.fixture(scope="module")
def breast(samples_home):
    (d,) = discover([Path(samples_home) / "samples" / MR])
    split = {d.name: {"train": ["breast1"], "val": []}}
    return slice_samples([d], split).samples


@pytest.mark.parametrize("prompt", ["box", "box_jitter", "point", "clicks"])
def test_fresh_adapter_scores_equal_the_base_model(breast, prompt, tmp_path):
    """A fresh adapter reproduces the base decoder, so both outputs score the same, and the
    same protocol gives the same numbers on a second run, with or without a cache."""
    base = tiny_sam()
    model = attach_adapter(tiny_sam(), "new").eval()
    proto = [Protocol(prompt, clicks=2)]
    got = list(evaluate_samples(model, breast, proto))
    assert len(got) == len(breast) and all(r.prompt == prompt for r in got)
    for r in got:
        assert set(r.dice) == {"base", "adapter"}
        assert r.dice["adapter"] == pytest.approx(r.dice["base"], abs=1e-6)
        assert r.selected_token is not None and len(r.experts) == 2
    plain = list(evaluate_samples(base, breast, proto))
    assert [r.dice["base"] for r in plain] == pytest.approx([r.dice["base"] for r in got],
                                                           abs=1e-6)
    cache = EmbeddingCache(tmp_path, model, "tiny")
    cached = list(evaluate_samples(model, breast, proto, cache=cache))
    # the cache stores float16 features: near, not bit-equal
    assert np.mean([abs(a.dice["base"] - b.dice["base"]) for a, b in zip(cached, got)]) < 0.05
    summary = summarize_results(got)
    entry = summary[prompt]["adapter"]["datasets"][breast[0].dataset]
    assert entry["n"] == len(breast) and entry["classes"]["tumour"]["n"] == len(breast)
    assert summary[prompt]["adapter"]["mean"] == pytest.approx(
        np.mean([r.dice["adapter"] for r in got]))


def test_protocol_metadata_names_only_what_applies():
    assert Protocol("point").to_dict() == {"prompt": "point", "seed": 0}
    assert Protocol("box_jitter", jitter=0.2).to_dict() == {
        "prompt": "box_jitter", "jitter": 0.2, "seed": 0}
    assert Protocol("clicks", clicks=5).to_dict()["clicks"] == 5


def test_box_protocol_reproduces_the_reference_dice(base_model, samples_home):
    """The box protocol on the real LiteMedSAM gives data.md's reference Dice for brain2
    (0.537, 3 slices: every labelled slice with >= 20 px, box padded by 2 px)."""
    (d,) = discover([Path(samples_home) / "samples" / MR])
    split = {d.name: {"train": ["brain2"], "val": []}}
    samples = slice_samples([d], split, min_foreground=20).samples
    assert len(samples) == 3
    got = list(evaluate_samples(base_model, samples, [Protocol("box")]))
    assert set(got[0].dice) == {"base"} and got[0].selected_token is None
    assert np.mean([r.dice["base"] for r in got]) == pytest.approx(0.537, abs=0.01)
