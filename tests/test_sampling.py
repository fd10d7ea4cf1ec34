"""Epoch plans: balanced drawing over datasets and classes, fixed sizes, determinism; the
validation cap per class."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from segmote.training.loader import epoch_plan, sample_weights
from segmote.training.run_data import cap_per_class

# one large dataset with two classes (900 + 90 samples) and one tiny dataset (10 samples)
GROUPS = [("big", "a")] * 900 + [("big", "b")] * 90 + [("small", "t")] * 10


def _draws(plan):
    return [i for batch in plan for _, i in batch]


def test_none_is_a_permutation_and_deterministic():
    plan = epoch_plan(len(GROUPS), 16, seed=3, epoch=1)
    drawn = _draws(plan)
    assert len(plan) == 63 and all(len(b) == 16 for b in plan)
    assert sorted(set(drawn)) == list(range(1000))  # each once, then padding from the start
    assert plan == epoch_plan(len(GROUPS), 16, seed=3, epoch=1)
    assert plan != epoch_plan(len(GROUPS), 16, seed=3, epoch=2)
    short = _draws(epoch_plan(len(GROUPS), 10, 3, 1, samples_per_epoch=100))
    assert len(short) == 100 and len(set(short)) == 100
    long = _draws(epoch_plan(10, 10, 3, 1, samples_per_epoch=25))
    assert len(long) == 30 and Counter(long[:20]) == Counter(list(range(10)) * 2)


@pytest.mark.parametrize("balance, expected", [
    ("dataset", {"big": 0.5, "small": 0.5}),
    ("dataset_class", {("big", "a"): 0.25, ("big", "b"): 0.25, ("small", "t"): 0.5})])
def test_balanced_draws_match_the_shares(balance, expected):
    w = sample_weights(GROUPS, balance)
    assert w.sum() == pytest.approx(1.0)
    drawn = _draws(epoch_plan(len(GROUPS), 50, 0, 0, w, samples_per_epoch=20000))
    assert len(drawn) == 20000
    key = (lambda i: GROUPS[i][0]) if balance == "dataset" else (lambda i: GROUPS[i])
    shares = Counter(key(i) for i in drawn)
    for k, share in expected.items():
        assert shares[k] / len(drawn) == pytest.approx(share, abs=0.02), k
    assert sample_weights(GROUPS, "none") is None


def test_cap_per_class_keeps_evenly_spaced_samples():
    samples = [SimpleNamespace(dataset="d", class_name=c, i=i)
               for c, n in (("x", 10), ("y", 3)) for i in range(n)]
    kept = cap_per_class(samples, 4)
    assert [s.i for s in kept if s.class_name == "x"] == [0, 3, 6, 9]
    assert [s.i for s in kept if s.class_name == "y"] == [0, 1, 2]
    assert cap_per_class(samples, None) is samples
    assert np.all([s in samples for s in kept])


def test_balance_power_interpolates_between_equal_and_proportional():
    groups = [("big", "a")] * 900 + [("small", "t")] * 100

    def share(power):
        return float(sample_weights(groups, "dataset", power)[-100:].sum())

    assert share(0.0) == pytest.approx(0.5)
    assert share(0.5) == pytest.approx(10 / (30 + 10))  # sqrt(100) / (sqrt(900) + sqrt(100))
    assert share(1.0) == pytest.approx(0.1)


def test_sampling_balance_reads_its_older_names(tmp_path) -> None:
    """`balance` / `balance_power` named the dataset sampling before the MoE balance loss made
    the word ambiguous: YAML files and older runs' config.yaml still load."""
    from segmote.errors import InputError
    from segmote.training.config import load_config

    old = tmp_path / "old.yaml"
    old.write_text("balance: dataset_class\nbalance_power: 0.5\n")
    cfg = load_config(old)
    assert cfg.data.sampling_balance == "dataset_class" and cfg.data.sampling_balance_power == 0.5
    assert "balance" not in cfg.to_dict()["data"]  # written back under the new names
    both = tmp_path / "both.yaml"
    both.write_text("balance: dataset\nsampling_balance: dataset_class\n")
    with pytest.raises(InputError, match="old name of sampling_balance"):
        load_config(both)
