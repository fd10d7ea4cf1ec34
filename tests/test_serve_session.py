"""`segmote.serve` bookkeeping without the model: the LRU of encoded slices, undo / redo with a
bounded history, label assignment, and the request guard's helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segmote.io import ImageData
from segmote.serve.cache import FeatureCache, nbytes
from segmote.serve.config import ServeConfig, is_loopback
from segmote.serve.errors import ApiError
from segmote.serve.files import resolve_under, upload_name
from segmote.serve.session import ImageSession, SegObject, mask_bbox


def test_feature_cache_evicts_least_recently_used_past_its_byte_budget():
    mb = torch.zeros(1 << 18)  # 1 MiB of float32
    cache = FeatureCache(3 << 20)
    for k in range(3):
        cache.put(k, (mb, mb[: 1 << 16]))  # 1.25 MiB each
    assert nbytes((mb, mb[: 1 << 16])) == (1 << 20) + (1 << 18)
    assert cache.keys() == [1, 2] and cache.total <= 3 << 20
    cache.get(1)  # used: 2 is now the oldest
    cache.put(3, mb)
    assert cache.keys() == [1, 3]
    big = FeatureCache(1)
    big.put("x", mb)  # larger than the budget: kept alone (the slice being prompted)
    assert big.keys() == ["x"]


def _session(undo_mb: float = 1.0) -> ImageSession:
    data = ImageData(np.zeros((40, 30, 5), np.int16), True, (1.0, 1.0, 2.0), "nifti",
                     Path("ct.nii.gz"))
    return ImageSession("id", data, "CT", None, ServeConfig(undo_mb=undo_mb), "ct.nii.gz")


def test_paint_undo_redo_and_labels():
    s = _session()
    mask = np.zeros((30, 40), bool)  # slice along axis 2: (rows = Y, cols = X)
    mask[5:10, 20:25] = True
    s.paint_slice(SegObject(1, "a", 0.9), 2, 3, mask)
    assert s.labels[20:25, 5:10, 3].all() and s.labels.sum() == 25
    assert s.next_label() == 2
    s.paint_slice(SegObject(2, "b"), 2, 3, np.roll(mask, 2, axis=0))  # overlaps a
    assert (s.labels == 1).sum() == 10 and (s.labels == 2).sum() == 25
    s.undo()
    assert (s.labels == 1).sum() == 25 and list(s.objects) == [1]
    s.redo()
    assert list(s.objects) == [1, 2]
    s.remove_object(1)
    assert (s.labels == 1).sum() == 0 and list(s.objects) == [2] and s.next_label() == 1
    s.undo()
    assert (s.labels == 1).sum() == 10
    found = np.zeros(s.labels.shape, np.uint16)
    found[0:2, 0:2, :] = 1
    s.paint_classes(found, [SegObject(7, "tumour")])
    assert (s.labels == 7).sum() == 20 and s.objects[7].name == "tumour"
    assert s.undo() and s.undo() and s.undo() and not s.undo()  # classes, b, a
    assert not s.labels.any() and s.objects == {}


def test_undo_history_is_bounded_in_bytes():
    s = _session(undo_mb=2 * 40 * 30 * 2 / 2**20)  # room for one slice edit (before + after)
    for k in range(4):
        s.paint_slice(SegObject(1, "a"), 2, k, np.ones((30, 40), bool))
    assert len(s.undo_stack) == 1
    assert s.undo() and not s.undo() and (s.labels[:, :, :3] == 1).all()


def test_mask_bbox_and_small_helpers(tmp_path):
    m = np.zeros((5, 6, 7), bool)
    m[1, 2:4, 6] = True
    assert mask_bbox(m) == (slice(1, 2), slice(2, 4), slice(6, 7))
    assert all(sl.stop == sl.start for sl in mask_bbox(np.zeros((2, 2), bool)))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert upload_name("../../etc/x.nii.gz") == "upload.nii.gz"
    with pytest.raises(ApiError):
        upload_name("notes.txt")
    (tmp_path / "a").mkdir()
    assert resolve_under(tmp_path, "a") == (tmp_path / "a").resolve()
    for bad in ("..", "a/../..", "/etc/passwd", "C:/x", "missing"):
        with pytest.raises(ApiError, match="not found"):
            resolve_under(tmp_path, bad)
