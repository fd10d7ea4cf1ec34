"""segmote.curation: planted bad masks are rejected with the right reason, near-duplicates collapse
to their best member without chaining, the budget and the modality x class balance hold, the
draw is seeded, and the manifest round-trips into training samples (or fails in one line)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from curation_data import clean_label, planted_dataset, texture
from tiny_models import one_thread, tiny_sam  # noqa: F401 (one_thread: autouse fixture)

from segmote.curation.candidates import enumerate_candidates
from segmote.curation.manifest import manifest_samples, read_manifest, write_manifest
from segmote.curation.pipeline import CurationConfig, curate
from segmote.curation.redundancy import near_duplicates, slice_vectors
from segmote.curation.scores import QualityThresholds, mask_scores
from segmote.curation.select import allocate, parse_budget, parse_weights, select_balanced
from segmote.data.cache import EmbeddingCache
from segmote.data.datasets import discover
from segmote.errors import InputError, ParameterError

# ------------------------------------------------------------------ scores


def test_mask_scores_by_hand():
    mask = np.zeros((6, 6), bool)
    mask[1:3, 1:4] = True  # 6 pixels
    mask[5, 5] = True      # an isolated pixel touching the border (2 of 20 border pixels)
    mask[4, 0] = True
    s = mask_scores(mask)
    assert (s.pixels, s.components) == (8, 3)
    assert s.largest_fraction == pytest.approx(6 / 8)
    assert s.isolated_fraction == pytest.approx(2 / 8)
    assert s.border_fraction == pytest.approx(2 / 20)
    assert s.foreground_ratio == pytest.approx(8 / 36)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root, expected = planted_dataset(tmp_path_factory.mktemp("planted") / "Planted")
    return discover([root]), expected


def test_planted_defects_rejected_with_reason(planted):
    datasets, expected = planted
    cands = enumerate_candidates(datasets).candidates
    got = {}
    for c in cands:
        got.setdefault(c.sample.case_id, {})[c.sample.class_name] = c.reason
    assert got["blank"] == {"organ": "blank_image", "lesion": "blank_image"}
    assert got["single_pixel"]["lesion"] == "tiny"
    assert got["shredded"]["organ"] == "fragmented"
    assert got["full_frame"]["organ"] == "fills_frame"
    assert got["no_lesion"] == {"organ": None}  # a class missing from a case is no defect
    assert got["empty"] == {"*": "empty"}
    (empty,) = [c for c in cands if c.reason == "empty"]
    assert (empty.sample.foreground, empty.sample.class_value) == (0, 0)
    # every clean mask passes (the defects above are the only rejections)
    for case, classes in got.items():
        if case.startswith("clean") or case.startswith("dup"):
            assert classes == {"organ": None, "lesion": None}, case
    assert got["single_pixel"]["organ"] is None and got["shredded"]["lesion"] is None


def test_thresholds_override_and_validation():
    t = QualityThresholds.from_dict({"min_pixels": 50}, "cfg.yaml")
    assert t.min_pixels == 50 and isinstance(t.min_pixels, int)
    with pytest.raises(InputError, match="cfg.yaml: unknown threshold"):
        QualityThresholds.from_dict({"min_pixel": 5}, "cfg.yaml")
    with pytest.raises(InputError, match="non-negative"):
        QualityThresholds.from_dict({"min_pixels": -1}, "cfg.yaml")


# ------------------------------------------------------------------ redundancy


def test_duplicates_collapse_to_best_member():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 32)).astype(np.float32)
    v = np.concatenate([base, base[[0, 0, 2]] + 0.01 * rng.standard_normal((3, 32))])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    groups = ["a"] * 7
    quality = [0.5, 1, 1, 1, 0.9, 0.4, 1]  # the copy at index 4 beats its original 0
    dup = near_duplicates(v, groups, quality, threshold=0.99)
    assert dup.tolist() == [4, -1, -1, -1, -1, 4, 2]
    # the same vectors in another class are not duplicates of these
    dup = near_duplicates(v, ["a", "b", "b", "b", "b", "a", "b"], quality, threshold=0.99)
    assert dup.tolist() == [-1, -1, -1, -1, -1, 0, 2]
    # the LSH path finds the same groups
    lsh = near_duplicates(v, groups, quality, threshold=0.99, exact_limit=0)
    assert lsh.tolist() == [4, -1, -1, -1, -1, 4, 2]


def test_no_chaining_along_gradual_change():
    # unit vectors 10 degrees apart along an arc: neighbours at cos 0.985, ends far apart
    angles = np.radians(np.arange(0, 100, 10))
    v = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    dup = near_duplicates(v, ["x"] * len(v), [1.0] * len(v), threshold=0.98)
    kept = np.flatnonzero(dup == -1)
    assert len(kept) == 5  # every other one: a connected-components grouping would keep 1
    assert (v[kept] @ v[kept].T - np.eye(len(kept)) < 0.98).all()


def test_slice_vectors_shape_and_mask_sensitivity():
    rng = np.random.default_rng(1)
    import torch
    emb = torch.from_numpy(rng.standard_normal((256, 16, 16)).astype(np.float32))
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[4:20, 4:20], label[40:60, 30:60] = 1, 2
    v = slice_vectors(emb, label, [1, 2])
    assert v.shape == (2, 256 + 1024 + 256 + 256) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] < 0.9  # same image, different objects: not duplicates


# ------------------------------------------------------------------ selection


def test_allocate_water_filling():
    assert allocate([100, 100, 100], [1, 1, 1], 30).tolist() == [10, 10, 10]
    assert allocate([2, 100, 100], [1, 1, 1], 30).tolist() == [2, 14, 14]
    assert allocate([100, 100], [3, 1], 40).tolist() == [30, 10]
    assert allocate([5, 5], [1, 0], 40).tolist() == [5, 0]
    assert allocate([10, 10, 10], [1, 1, 1], 2).sum() == 2


def test_budget_balance_and_seed():
    cells = [("CT", "liver")] * 500 + [("MR", "liver")] * 40 + [("CT", "lesion")] * 60
    quality = np.linspace(0.1, 1, len(cells))
    a = select_balanced(cells, quality, 90, seed=3, by="cell")
    assert len(a) == 90 and len(set(a.tolist())) == 90
    counts = {c: sum(cells[i] == c for i in a) for c in set(cells)}
    assert set(counts.values()) == {30}
    assert np.array_equal(a, select_balanced(cells, quality, 90, seed=3, by="cell"))
    assert not np.array_equal(a, select_balanced(cells, quality, 90, seed=4, by="cell"))
    w = select_balanced(cells, quality, 90, seed=3, weights=parse_weights(["MR/*=0"]))
    assert not any(cells[i][0] == "MR" for i in w) and len(w) == 90
    # temperature: shares ~ sqrt(cell size) (55.2 : 15.6 : 19.1 of 90; the one left over goes
    # to the largest share), power 1: ~ the size
    sq = select_balanced(cells, quality, 90, seed=3, power=0.5, by="cell")
    counts = {c: sum(cells[i] == c for i in sq) for c in set(cells)}
    assert counts == {("CT", "liver"): 56, ("MR", "liver"): 15, ("CT", "lesion"): 19}
    lin = select_balanced(cells, quality, 120, seed=3, power=1.0, by="cell")
    counts = {c: sum(cells[i] == c for i in lin) for c in set(cells)}
    assert counts == {("CT", "liver"): 100, ("MR", "liver"): 8, ("CT", "lesion"): 12}
    # two-level balance: each modality half (45), CT's half split over its two classes; MR
    # holds 40, its remainder goes to CT
    mod = select_balanced(cells, quality, 90, seed=3)  # the default: by modality
    counts = {c: sum(cells[i] == c for i in mod) for c in set(cells)}
    assert counts == {("CT", "liver"): 25, ("MR", "liver"): 40, ("CT", "lesion"): 25}
    with pytest.raises(InputError, match="balance must be one of cell, modality"):
        select_balanced(cells, quality, 90, seed=3, by="dataset")
    # quality-weighted draw: the better half of a cell is favoured
    top = select_balanced([("CT", "x")] * 1000, np.r_[np.full(500, 0.05), np.ones(500)], 100, 0)
    assert (top >= 500).sum() > 80


def test_modality_balance_keeps_an_atlas_from_taking_the_budget():
    """One CT class beside a 10-structure MR atlas: by cell CT gets 1/11 of the budget, by
    modality half of it, and the atlas's half is split evenly over its structures."""
    cells = [("CT", "tumour")] * 500 + [("MR", f"s{k}") for k in range(10) for _ in range(50)]
    quality = np.ones(len(cells))

    def counts(by):
        picked = select_balanced(cells, quality, 100, seed=0, by=by)
        return Counter(cells[i] for i in picked)

    assert counts("cell")[("CT", "tumour")] == 10  # 100 / 11 -> 9, plus one leftover unit
    by_modality = counts("modality")
    assert by_modality[("CT", "tumour")] == 50
    assert {by_modality[("MR", f"s{k}")] for k in range(10)} == {5}


def test_one_modality_balances_alike_by_cell_and_by_modality():
    """With one modality the two levels give the same selection (why the single-atlas
    benchmarks are unchanged by the modality default), weights and power included."""
    rng = np.random.default_rng(0)
    cells = [("MR", f"s{k}") for k in rng.integers(0, 37, 2000)]
    quality = rng.random(len(cells))
    for power, weights in ((0.0, {}), (0.5, parse_weights(["MR/s1*=3", "MR/s2=0"]))):
        for budget in (37, 74, 320, 1999):
            assert np.array_equal(
                select_balanced(cells, quality, budget, 1, weights, power, by="cell"),
                select_balanced(cells, quality, budget, 1, weights, power, by="modality"))


def test_parse_budget_and_weights():
    assert parse_budget("5000", 10) == 5000 and parse_budget("1%", 12345) == 123
    assert parse_budget("0.001%", 10) == 1
    for bad in ("0", "-3", "abc", "150%", "0%"):
        with pytest.raises(ParameterError, match="^budget: expected"):
            parse_budget(bad, 100)
    with pytest.raises(ParameterError, match="^weights: expected") as err:
        parse_weights(["liver=2"])
    assert err.value.render({"weights": "--weight"}).startswith("--weight: ")


# ------------------------------------------------------------------ pipeline + manifest


@pytest.fixture(scope="module")
def curated(planted, tmp_path_factory):
    datasets, _ = planted
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache"), tiny_sam(), "tiny")
    return curate(datasets, CurationConfig(budget="100%", dup_threshold=0.99), cache)


def test_pipeline_drops_duplicates_keeps_one(curated):
    cands = curated.candidates
    chosen = [cands[i].sample for i in curated.selected]
    for cls in ("organ", "lesion"):
        group = [s.case_id for s in chosen if s.class_name == cls
                 and s.case_id in ("clean_0", "dup_a", "dup_b")]
        assert len(group) == 1, (cls, group)
    dups = [c for c in cands if c.reason == "duplicate"]
    assert len(dups) == 4
    for c in dups:
        kept = cands[c.duplicate_of]
        assert kept.reason is None and kept.sample.class_name == c.sample.class_name
    # every clean case's masks are selected (budget 100 % >= what is accepted)
    assert sum(c.reason is None for c in cands) == len(curated.selected)


def test_manifest_round_trip(curated, tmp_path):
    path = tmp_path / "m.json"
    written = write_manifest(curated, path)
    assert json.loads(path.read_text()) == written
    assert not list(tmp_path.glob(".*tmp"))
    assert {e["reason"] for e in written["rejected"]} >= {"blank_image", "tiny", "fragmented",
                                                          "fills_frame", "empty", "duplicate"}
    datasets, samples = manifest_samples(path)
    want = [curated.candidates[i].sample for i in curated.selected]
    assert [(s.case_id, s.class_value, s.class_name, s.image.resolve()) for s in samples] == \
        [(s.case_id, s.class_value, s.class_name, Path(s.image).resolve()) for s in want]
    assert {c.case_id for d in datasets for c in d.cases} == {s.case_id for s in want}
    assert datasets[0].labels == {1: "organ", 2: "lesion"} and not datasets[0].is_3d


def _edit(src: Path, dst: Path, fn) -> Path:
    data = json.loads(src.read_text())
    fn(data)
    dst.write_text(json.dumps(data))
    return dst


def test_bad_manifests_fail_in_one_line(curated, tmp_path):
    good = tmp_path / "good.json"
    write_manifest(curated, good)
    cases = {
        "not a JSON manifest": lambda p: p.write_text("{oops"),
        "not a segmote curation manifest": lambda p: p.write_text("[]"),
        "not found": lambda p: _edit(good, p, lambda d: d["selected"][0].update(
            image="/nonexistent/x.png")),
        "is not in 'datasets'": lambda p: _edit(good, p, lambda d: d["selected"][0].update(
            dataset="Other")),
        "is not a class": lambda p: _edit(good, p, lambda d: d["selected"][0].update(value=7)),
        "repeats entry 0": lambda p: _edit(good, p, lambda d: d["selected"].append(
            d["selected"][0])),
        "lacks label": lambda p: _edit(good, p, lambda d: d["selected"][0].pop("label")),
        "version": lambda p: _edit(good, p, lambda d: d.update(version=9)),
    }
    for i, (message, make) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.json"
        make(p)
        with pytest.raises(InputError, match=message) as err:
            manifest_samples(p)
        assert "\n" not in str(err.value) and str(p) in str(err.value)
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "missing.json")


def test_volume_dataset_slices_and_empty_case(tmp_path):
    root = tmp_path / "Dataset009_Vol"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = np.stack([texture(k, 48) for k in range(6)], axis=2).astype(np.int16)
    label = np.zeros((48, 48, 6), np.uint8)
    for k in (1, 2, 3):
        label[..., k] = clean_label(k, 48) == 1  # organ on slices 1-3; class 2 never present
    for case, lab in (("v1", label), ("v2", np.zeros_like(label))):  # v2: no foreground
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1, "cyst": 2},
        "file_ending": ".nii.gz"}))
    result = curate(discover([root]), CurationConfig(dedup=False))
    path = tmp_path / "m.json"
    data = write_manifest(result, path)
    assert sorted(e["slice"] for e in data["selected"]) == [1, 2, 3]
    assert all(e["axis"] == 2 for e in data["selected"])
    (empty,) = data["rejected"]
    assert (empty["case"], empty["class"], empty["reason"], empty["slice"]) == \
        ("v2", "*", "empty", None)
    _, samples = manifest_samples(path)
    assert [s.slice_index for s in samples] == [1, 2, 3]
    bad = _edit(path, tmp_path / "bad.json", lambda d: d["selected"][0].update(slice=6))
    with pytest.raises(InputError, match="slice 6 is outside v1.nii.gz"):
        manifest_samples(bad)


def test_several_axes_and_include_filter(tmp_path):
    root = tmp_path / "Dataset010_Cube"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = np.stack([texture(k, 40) for k in range(40)], axis=2).astype(np.int16)
    label = np.zeros((40, 40, 40), np.uint8)
    label[10:30, 12:28, 15:25] = 1  # a box: 10 axial, 20 sagittal, 16 coronal slices
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / "c_0000.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / "c.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "box": 1},
        "file_ending": ".nii.gz"}))
    datasets = discover([root])
    result = curate(datasets, CurationConfig(dedup=False, axes=[2, 0, 1]))
    axes = [result.candidates[i].sample.axis for i in result.selected]
    assert (axes.count(2), axes.count(0), axes.count(1)) == (10, 20, 16)
    path = tmp_path / "m.json"
    write_manifest(result, path)
    _, samples = manifest_samples(path)
    assert sorted({(s.axis, s.slice_index) for s in samples}) == sorted(
        {(s.axis, s.slice_index) for s in (result.candidates[i].sample for i in result.selected)})
    held = curate(datasets, CurationConfig(dedup=False),
                  include=lambda s: s.slice_index is not None and s.slice_index < 20)
    assert sorted(held.candidates[i].sample.slice_index for i in held.selected) == list(
        range(15, 20))
    with pytest.raises(InputError, match="axes must be distinct"):
        curate(datasets, CurationConfig(axes=[2, 2]))


def test_mask_gate_keeps_same_looking_images_with_other_masks():
    rng = np.random.default_rng(2)
    image = rng.standard_normal(64)
    k1, k2 = np.zeros(256), np.zeros(256)
    k1[:40], k2[20:60] = 1, 1  # overlapping masks: occupancy cosine 0.5
    rows = [np.r_[image, k1], np.r_[image, k1], np.r_[image + 0.01, k2]]
    v = np.array([r / np.linalg.norm(r) for r in rows], np.float32)
    assert v[0] @ v[2] > 0.6  # image parts dominate the overall cosine
    dup = near_duplicates(v, ["x"] * 3, [1, 0.5, 0.9], threshold=0.6, mask_dims=256,
                          mask_threshold=0.99)
    assert dup.tolist() == [-1, 0, -1]
    assert near_duplicates(v, ["x"] * 3, [1, 0.5, 0.9], threshold=0.6).tolist() == [-1, 0, 0]
    assert near_duplicates(v, ["x"] * 3, [1, 0.5, 0.9], threshold=0.6, mask_dims=256,
                           exact_limit=0).tolist() == [-1, 0, -1]
