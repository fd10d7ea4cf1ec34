"""segmote.data.cache with the real LiteMedSAM encoder on real slices: entries equal a direct
encode, labels sit in the padded input frame, valid entries are reused without encoding, damaged
or half-written entries are re-encoded, and DDP ranks split the work exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segmote.data.cache import EmbeddingCache, label_to_frame
from segmote.data.datasets import discover, slice_samples
from segmote.slicing import volume_slice
from segmote.io import read_image
from segmote.io.writers import write_label
from segmote.modeling.encoder_output import EncoderOutput
from segmote.transforms import preprocess

MR = "pyradiomics/Dataset002_PyradiomicsMR"


class Counting(nn.Module):
    """The real model, counting encoder calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    img_size = property(lambda self: self.model.img_size)
    device = property(lambda self: self.model.device)
    image_encoder = property(lambda self: self.model.image_encoder)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        self.calls += 1
        return self.model.encode(x)


@pytest.fixture(scope="module")
def breast(samples_home):
    """Real MR dataset, split so that only breast1 (45 x 120 x 21, small slices) is trained."""
    (d,) = discover([Path(samples_home) / "samples" / MR])
    return d, {d.name: {"train": ["breast1"], "val": ["brain1", "brain2"]}}


@pytest.fixture(scope="module")
def built(base_model, breast, tmp_path_factory):
    """A cache holding two real slices (axial, and sagittal: a non-square, padded frame)."""
    d, split = breast
    axial = slice_samples([d], split, axis=2).samples
    sagittal = slice_samples([d], split, axis=0).samples
    samples = [axial[len(axial) // 2], sagittal[len(sagittal) // 2]]
    root = tmp_path_factory.mktemp("cache")
    stats = EmbeddingCache(root, base_model, "litemedsam").build(samples, progress=False)
    assert (stats.built, stats.reused, stats.rebuilt) == (2, 0, 0)
    return root, samples


def _slice(sample) -> tuple[np.ndarray, np.ndarray]:
    image, label = read_image(sample.image).array, read_image(sample.label).array
    k, axis = sample.slice_index, sample.axis
    return volume_slice(image, k, axis), volume_slice(label, k, axis)


def test_entry_equals_direct_encode(base_model, built):
    root, samples = built
    cache = EmbeddingCache(root, base_model, "litemedsam")
    for sample in samples:
        got = cache.get(sample)
        image, _ = _slice(sample)
        x, geometry = preprocess(image, 256, "MR")
        with torch.inference_mode():
            want = base_model.encode(x[None])
        assert got.image_embedding.dtype == torch.float32 and got.label.dtype == torch.int64
        torch.testing.assert_close(got.image_embedding, want.image_embedding[0],
                                   rtol=2e-3, atol=1e-3)
        torch.testing.assert_close(got.early_features, want.early_features[0],
                                   rtol=2e-3, atol=1e-3)
        assert got.geometry == geometry
    assert (cache.stats.built, cache.stats.rebuilt) == (0, 0)


def test_label_in_padded_frame(base_model, built):
    root, samples = built
    cache = EmbeddingCache(root, base_model, "litemedsam")
    sample = samples[1]  # sagittal: (21, 120) -> resized (45, 256), padded below
    got = cache.get(sample)
    _, label = _slice(sample)
    g = got.geometry
    assert g.orig_hw == label.shape
    h, w = (round(n * 256 / g.target) for n in g.resized_hw)
    assert got.label.shape == (256, 256) and h < 256
    assert not got.label[h:].any() and not got.label[:, w:].any()  # padding is background
    # nearest neighbour at pixel centres, as torch's "nearest-exact" resizes
    ref = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=(h, w),
                        mode="nearest-exact")[0, 0].long()
    assert torch.equal(got.label[:h, :w], ref)
    assert torch.equal(got.label, torch.from_numpy(label_to_frame(label, g, 256).astype(np.int64)))
    assert set(got.label.unique().tolist()) == {0, sample.class_value}


def test_second_build_reuses_everything(base_model, built):
    root, samples = built
    counting = Counting(base_model)
    stats = EmbeddingCache(root, counting, "litemedsam").build(samples, progress=False)
    assert (stats.built, stats.reused, stats.rebuilt, counting.calls) == (0, 2, 0, 0)
    # another backbone id or window is another key: nothing of the above is reused by mistake
    other = EmbeddingCache(root, counting, "other-weights")
    assert other.entry_dir(samples[0]) != EmbeddingCache(root, counting, "litemedsam").entry_dir(
        samples[0])


def _entry_copy(root: Path, samples, tmp_path: Path, model) -> tuple[EmbeddingCache, Path]:
    copy = shutil.copytree(root, tmp_path / "cache")
    cache = EmbeddingCache(copy, Counting(model), "litemedsam")
    return cache, cache.entry_dir(samples[0])


def test_truncated_array_is_rebuilt(base_model, built, tmp_path):
    root, samples = built
    reference = EmbeddingCache(root, base_model, "litemedsam").get(samples[0])
    cache, entry = _entry_copy(root, samples, tmp_path, base_model)
    data = (entry / "embedding.npy").read_bytes()
    (entry / "embedding.npy").write_bytes(data[: len(data) // 2])
    got = cache.get(samples[0])
    assert (cache.stats.rebuilt, cache.model.calls) == (1, 1)
    assert torch.equal(got.image_embedding, reference.image_embedding)
    assert torch.equal(got.label, reference.label)
    fresh = EmbeddingCache(entry.parents[1], Counting(base_model), "litemedsam")
    fresh.get(samples[0])  # the rewritten entry is valid for a new process
    assert fresh.model.calls == 0


def test_edited_meta_and_flipped_byte_are_rebuilt(base_model, built, tmp_path):
    root, samples = built
    cache, entry = _entry_copy(root, samples, tmp_path, base_model)
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"]["early"]["shape"][0] += 1
    (entry / "meta.json").write_text(json.dumps(meta))
    other = cache.entry_dir(samples[1])
    raw = bytearray((other / "label.npy").read_bytes())
    raw[-1] ^= 0xFF  # same size, same header: only the sha256 can tell
    (other / "label.npy").write_bytes(bytes(raw))
    stats = cache.build(samples, progress=False)
    assert (stats.built, stats.reused, stats.rebuilt, cache.model.calls) == (0, 0, 2, 2)
    assert EmbeddingCache(entry.parents[1], base_model, "litemedsam").build(
        samples, progress=False).reused == 2


def test_killed_build_is_not_an_entry(base_model, built, tmp_path):
    root, samples = built
    cache, entry = _entry_copy(root, samples, tmp_path, base_model)
    (entry / "meta.json").unlink()  # killed after the arrays, before meta.json
    got = cache.get(samples[0])
    assert (cache.stats.rebuilt, cache.model.calls) == (1, 1)
    assert (entry / "meta.json").is_file() and got.image_embedding.shape == (256, 64, 64)
    assert not [p for p in entry.iterdir() if ".tmp-" in p.name]


class TinyEncoderModel(nn.Module):
    """A fast stand-in encoder (pooling + a fixed projection) for the sharding bookkeeping."""

    img_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Conv2d(3, 8, 1)
        self.encoded: list[float] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        self.encoded.append(float(x.sum()))
        feats = self.image_encoder(F.avg_pool2d(x, 16))
        return EncoderOutput(feats.repeat(1, 32, 1, 1), feats)


def test_ranks_cover_all_pairs_once(breast, tmp_path):
    d, split = breast
    samples = [s for axis in (0, 2) for s in slice_samples([d], split, axis=axis).samples]
    pairs = {(s.image, s.slice_index, s.axis) for s in samples}  # axis 0 and 2 share indices
    assert len(pairs) == len(samples) >= 10
    models, built = [], 0
    for rank in range(3):
        model = TinyEncoderModel()
        stats = EmbeddingCache(tmp_path, model, "tiny").build(samples, rank, 3, progress=False)
        assert stats.reused == stats.rebuilt == 0  # no rank touched another's share
        built += stats.built
        models.append(model)
    assert built == len(pairs) == sum(len(m.encoded) for m in models)
    assert len(list(tmp_path.glob("*/*/meta.json"))) == len(pairs)
    again = EmbeddingCache(tmp_path, TinyEncoderModel(), "tiny")
    assert again.build(samples, progress=False).reused == len(pairs)
    got = again.get(samples[0])
    assert got.image_embedding.shape == (256, 4, 4) and got.label.shape == (16, 16)


def test_label_sets_on_one_image_share_an_encoder_pass(samples_home, tmp_path):
    """Two datasets drawing different labels on the same image file (as Colin27's AAL and
    brain-mask sets do) get separate entries but one encoder pass per slice."""
    src = Path(samples_home) / "samples" / MR
    roots = []
    for name, transform in (("DatasetA", lambda lab: lab), ("DatasetB", lambda lab: 1 - lab)):
        root = tmp_path / name
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        shutil.copy(src / "imagesTr" / "breast1_0000.nrrd", root / "imagesTr")
        label = read_image(src / "labelsTr" / "breast1.nrrd")
        write_label(transform(label.array.astype(np.uint8)), label,
                    root / "labelsTr" / "breast1.nrrd")
        meta = json.loads((src / "dataset.json").read_text())
        meta["patient_of_case"] = {}
        (root / "dataset.json").write_text(json.dumps(meta))
        roots.append(root)
    datasets = discover(roots)
    split = {d.name: {"train": ["breast1"], "val": []} for d in datasets}
    samples = slice_samples(datasets, split).samples
    slices = {s.slice_index for s in samples}
    assert {s.dataset for s in samples} == {"DatasetA", "DatasetB"}
    model = TinyEncoderModel()
    cache = EmbeddingCache(tmp_path / "cache", model, "tiny")
    stats = cache.build(samples, progress=False)
    per_dataset = {s.dataset: {x.slice_index for x in samples if x.dataset == s.dataset}
                   for s in samples}
    assert stats.built == sum(len(v) for v in per_dataset.values())
    assert len(model.encoded) == len(slices) < stats.built  # shared passes
    a = next(s for s in samples if s.dataset == "DatasetA")
    b = next(s for s in samples if s.dataset == "DatasetB" and s.slice_index == a.slice_index)
    ga, gb = cache.get(a), cache.get(b)
    assert torch.equal(ga.image_embedding, gb.image_embedding)
    assert not torch.equal(ga.label, gb.label)
