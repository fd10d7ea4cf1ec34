"""Our LiteMedSAM reproduces the reference Dice of ../shared/docs/data.md: within 0.01 for every
set whose protocol is fully specified (lesions, nuclei); atlas sets within the tolerance given in
segmote.evaluation.reference (their protocol is under-specified).

This runs the product path (Segmenter with its default per-modality preprocessing) on real data
with the reference protocol (segmote.evaluation.reference).
"""

from __future__ import annotations

import numpy as np
import pytest

from segmote.evaluation.reference import (REFERENCE_DICE, REFERENCE_TOLERANCE, reference_sets,
                                          run_reference)
from segmote.predict.segmenter import Segmenter


@pytest.mark.parametrize("name", list(REFERENCE_DICE))
def test_reference_dice(name, base_model, samples_home):
    instances = reference_sets(samples_home)[name]()
    scores = run_reference(Segmenter(base_model), instances)
    assert scores, f"no instances for {name}"
    got = float(np.mean(scores))
    assert abs(got - REFERENCE_DICE[name]) <= REFERENCE_TOLERANCE[name], \
        f"{name}: Dice {got:.4f} (n={len(scores)}) vs reference {REFERENCE_DICE[name]}"
