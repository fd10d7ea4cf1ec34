"""Batches and the background prefetch (`segmote.batching`), and the embedding cache built in
batches (real LiteMedSAM encoder, real MR slices): the same entries as one slice at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from segmote.batching import check_batch_size, chunks, default_batch_size, prefetched
from segmote.errors import InputError


def test_default_batch_size_by_device_and_checks() -> None:
    assert default_batch_size("cpu") == 1 and default_batch_size(torch.device("cuda")) == 32
    assert check_batch_size(None, "cpu") == 1 and check_batch_size(7, "cpu") == 7
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="batch_size"):
            check_batch_size(bad, "cpu")
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []


def test_prefetched_keeps_order_overlaps_and_raises_where_it_failed() -> None:
    seen: list[str] = []

    def slow(i: int) -> int:
        seen.append(threading.current_thread().name)
        time.sleep(0.01)
        return i * i

    assert list(prefetched(range(6), slow)) == [0, 1, 4, 9, 16, 25]
    assert set(seen) == {"segmote-prefetch"}  # the work ran beside the consumer

    def fails_at_3(i: int) -> int:
        if i == 3:
            raise ValueError("bad slice 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad slice 3"):
        for v in prefetched(range(6), fails_at_3):
            got.append(v)
    assert got == [0, 1, 2]
    gen = prefetched(range(1000), slow, ahead=2)
    assert next(gen) == 0
    gen.close()  # stops the producer: it does not run on through all 1000 items
    time.sleep(0.05)
    assert len(seen) < 6 + 10


def test_cache_built_in_batches_equals_one_at_a_time(base_model, samples_home,
                                                     tmp_path: Path) -> None:
    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import discover, slice_samples

    root = Path(samples_home) / "samples" / "pyradiomics/Dataset002_PyradiomicsMR"
    (d,) = discover([root])
    split = {d.name: {"train": ["breast1"], "val": []}}
    samples = slice_samples([d], split, axis=2).samples[:5]
    one = EmbeddingCache(tmp_path / "one", base_model, "litemedsam")
    batched = EmbeddingCache(tmp_path / "batched", base_model, "litemedsam")
    n = one.build(samples, progress=False, batch_size=1).built  # entries (slice, label file)
    assert n >= 3
    stats = batched.build(samples, progress=False, batch_size=2)  # a full batch and a part
    assert (stats.built, stats.reused) == (n, 0)
    for s in samples:
        a, b = one.get(s), batched.get(s)
        assert torch.equal(a.label, b.label) and a.geometry == b.geometry
        # float16 entries of the same encoder: batched kernels may round the last fp32 bit
        # differently, which float16 storage almost always absorbs
        torch.testing.assert_close(a.image_embedding, b.image_embedding, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(a.early_features, b.early_features, rtol=1e-3, atol=1e-3)
    assert batched.build(samples, progress=False, batch_size=2).reused == n
