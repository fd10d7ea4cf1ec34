"""The default adapter's recipe: training folders built from the real samples, a held-out split
that never puts a patient (or a slab / quadrant) on both sides, and the shipped config."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np

from segmote.data.datasets import discover, load_split, slice_samples
from segmote.training.config import load_config
from segmote.training.default_adapter import (HELD_OUT_SLABS, SLAB, config_path, prepare,
                                              record_modalities)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_writes_disjoint_held_out_data(samples_home, tmp_path):
    prepared = prepare(tmp_path / "data")
    datasets = {d.name: d for d in discover(prepared.data_dirs)}
    split = load_split(prepared.split)
    assert set(split) == set(datasets) and len(datasets) == 5
    for name, entry in split.items():
        d = datasets[name]
        patient = {c.case_id: d.patient_of_case.get(c.case_id, c.case_id) for c in d.cases}
        assert entry["val"] and entry["train"]
        assert not set(entry["train"]) & set(entry["val"])
        if "Pyradiomics" in name:  # unseen patients
            assert not {patient[c] for c in entry["train"]} & {patient[c] for c in entry["val"]}
        assert entry["note"]
    # Colin27 slabs: together they are the whole volume, in place (affine shifted per slab)
    aal = datasets["Dataset006_Colin27AALSlabs"]
    src = nib.load(Path(samples_home) / "samples/colin27/Dataset003_Colin27AAL/imagesTr/"
                   "colin27_0000.nii.gz")
    slabs = sorted(c.image for c in aal.cases)
    vol = np.concatenate([np.asarray(nib.load(p).dataobj) for p in slabs], axis=2)
    assert np.array_equal(vol, np.asarray(src.dataobj))
    second = nib.load(slabs[1])
    assert np.allclose(second.affine[:3, 3], src.affine[:3, 3] + SLAB * src.affine[:3, 2])
    assert split[aal.name]["val"] == [f"colin27_s{s:02d}" for s in HELD_OUT_SLABS]
    # the AAL and brain-mask sets share image bytes, so the cache encodes each slice once
    brain = datasets["Dataset007_Colin27BrainSlabs"]
    for a, b in zip(sorted(c.image for c in aal.cases), sorted(c.image for c in brain.cases)):
        assert _sha(a) == _sha(b)
    # nuclei: one sample per nucleus, quadrants disjoint
    nuclei = datasets["Dataset005_NucleiQuadrants"]
    assert nuclei.instance_labels and nuclei.labels == {1: "nuclei"}
    val = slice_samples([nuclei], split, part="val", min_foreground=20).samples
    assert len(val) >= 20 and {s.case_id for s in val} == {"nuclei_q3"}
    # preparing twice gives the same bytes (a reproducible recipe)
    again = prepare(tmp_path / "again")
    for a, b in zip(prepared.data_dirs[2:], again.data_dirs[2:]):
        files_a = sorted(p for p in a.rglob("*") if p.is_file())
        files_b = sorted(p for p in b.rglob("*") if p.is_file())
        assert [_sha(p) for p in files_a] == [_sha(p) for p in files_b]


def test_shipped_config_is_valid_and_balanced():
    cfg = load_config(config_path())
    assert cfg.data.sampling_balance == "dataset_class" and cfg.data.samples_per_epoch
    assert cfg.prompts.mix["point"] > 0
    assert cfg.model.backbone == "litemedsam"
    assert not cfg.uses_text and cfg.model.ppt_queries == 0  # stage 1: box / point only
    text = load_config(config_path("text"))  # stage 2: only the text / PPT modules train
    assert text.uses_text and text.model.ppt_queries
    assert text.model.train_parts == ["text", "ppt"]
    assert text.data.sampling_balance == cfg.data.sampling_balance
    assert text.data.min_foreground == cfg.data.min_foreground
    # the validation cases are the held-out test set
    assert text.calibration.calibrate_on == "train"


def test_record_modalities_rewrites_the_header_only(samples_home, tmp_path):
    import pytest
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from segmote.adapter import read_adapter_card
    from segmote.build import DEFAULT_ADAPTER
    from segmote.errors import InputError

    prepared = prepare(tmp_path / "data")
    # the shipped adapter as it was before its modalities were recorded
    with safe_open(DEFAULT_ADAPTER, framework="pt") as f:
        header = {k: v for k, v in f.metadata().items()
                  if k not in ("training_modalities", "earlier_versions")}
    old = tmp_path / "old.safetensors"
    save_file(load_file(DEFAULT_ADAPTER), str(old), metadata=header)
    assert read_adapter_card(old).classes_for_modality("CT") is None  # every class asked
    before = _sha(old)
    with pytest.raises(InputError, match="Dataset005_NucleiQuadrants, Dataset006"):
        record_modalities(old, prepared.data_dirs[:2])  # the pyradiomics folders only
    assert _sha(old) == before
    written = record_modalities(old, prepared.data_dirs)
    card = read_adapter_card(old)
    assert card.training_modalities == written and written["Dataset005_NucleiQuadrants"] == \
        "MICROSCOPY" and card.classes_for_modality("CT") == ["tumour"]
    assert card.earlier_versions == {before: "training_modalities recorded in the header; "
                                             "every tensor and every other entry unchanged"}
    shipped, rewritten = load_file(DEFAULT_ADAPTER), load_file(old)
    assert all(shipped[k].equal(rewritten[k]) for k in shipped) and shipped.keys() == \
        rewritten.keys()
    # recorded already: the file stays as it is (the shipped one too)
    after = _sha(old)
    assert record_modalities(old, prepared.data_dirs) == written and _sha(old) == after
    # the shipped file holds what the recipe's folders say (never rewritten by a test)
    assert read_adapter_card(DEFAULT_ADAPTER).training_modalities == written
