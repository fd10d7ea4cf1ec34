"""The class presence head: its shape, its training targets and weights, that it learns, that
the automatic mode drops what it rejects while every mask stays bit-identical, and
`segmote presence` end to end on real weights and two real modalities."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import segmote
from segmote.adapter import attach_adapter
from segmote.errors import ConfigError
from segmote.modeling.presence import PresenceHead, image_summary
from segmote.modeling.segmote import MoTEConfig
from segmote.predict.auto import presence_threshold
from segmote.predict.segmenter import Segmenter
from segmote.training.presence import (PresenceSettings, fit_presence, learned_queries,
                                       presence_counts, query_weights, slice_targets)
from lung_case import lung_dataset  # noqa: F401  (fixture)
from test_auto import DIM, HashEncoder, card
from tiny_models import one_thread, tiny_sam  # noqa: F401  (one_thread: autouse fixture)

ASSETS = Path(segmote.__file__).parent / "assets" / "samples"


def test_head_shapes_and_one_summary_for_many_classes():
    torch.manual_seed(0)
    head = PresenceHead(embed_dim=8, text_dim=5, rank=4)
    emb = torch.randn(2, 8, 6, 6)
    summary = image_summary(emb)
    assert summary.shape == (2, 16)
    # per token layer norm: each token has mean 0, so the mean of means is ~0
    assert summary[:, :8].mean(1).abs().max() < 1e-5
    text = torch.randn(3, 5)
    assert head(summary[:1], text).shape == (3,)
    assert torch.allclose(head(summary[:1], text),
                          head(summary[:1].expand(3, -1), text))


def test_config_needs_text_for_presence():
    with pytest.raises(ConfigError, match="presence"):
        MoTEConfig(presence=True)
    with pytest.raises(ConfigError, match="presence"):
        MoTEConfig(text_dim=4, presence="yes")
    assert MoTEConfig.from_dict({"text_dim": 4}).presence is False  # older adapter headers


def _s(dataset: str, k: int, name: str = "x", value: int = 1) -> SimpleNamespace:
    return SimpleNamespace(dataset=dataset, label=f"{dataset}.nii", slice_index=k, axis=2,
                           class_name=name, class_value=value)


def test_slice_targets_and_class_balanced_weights():
    samples = [_s("ct", 0, "liver", 1), _s("ct", 0, "kidney", 2), _s("ct", 1, "liver", 1),
               _s("mr", 0, "brain", 1)]
    classes = {"ct": {1: "liver", 2: "kidney"}, "mr": {1: "brain"}}
    other = {"ct": ["brain"], "mr": ["kidney", "liver"]}
    present = {("ct", 0): {1, 2}, ("ct", 1): {1}, ("mr", 0): {1}}
    def labels_of(s):
        return present[(s.dataset, s.slice_index)]
    got = {(s.dataset, s.slice_index): t
           for s, t in slice_targets(samples, classes, other, labels_of)}
    assert got == {("ct", 0): {"liver": 1, "kidney": 1, "brain": 0},
                   ("ct", 1): {"liver": 1, "kidney": 0, "brain": 0},
                   ("mr", 0): {"brain": 1, "kidney": 0, "liver": 0}}
    items = slice_targets(samples, classes, other, labels_of)
    learned = {n: {(s.dataset, s.slice_index): t for s, t in learned_queries(items, other, n)}
               for n in ("other-modalities", "dataset-absent", "both")}
    assert learned["other-modalities"][("ct", 1)] == {"liver": 1, "brain": 0}  # kidney: not asked
    assert learned["dataset-absent"][("ct", 1)] == {"liver": 1, "kidney": 0}
    assert learned["dataset-absent"][("mr", 0)] == {"brain": 1}
    assert learned["both"][("ct", 1)] == got[("ct", 1)]

    w = query_weights(list(got.values()))
    total = {}
    for (name, y), v in w.items():
        n = sum(1 for t in got.values() if t.get(name) == y)
        total.setdefault(name, {})[y] = v * n
    assert sum(sum(t.values()) for t in total.values()) == pytest.approx(1.0)
    for name, by_answer in total.items():  # each class 1/3; its answers halve it
        assert sum(by_answer.values()) == pytest.approx(1 / 3)
        assert all(v == pytest.approx(1 / 6) for v in by_answer.values())


def test_fit_learns_which_kind_of_image_a_class_belongs_to():
    """Two kinds of image (summaries drawn around two centres), class "a" only on the first and
    "b" only on the second: the trained head keeps each where it belongs and drops it on the
    other, also on new draws."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 16, generator=gen) * 2
    texts = {"a": torch.randn(5, generator=gen), "b": torch.randn(5, generator=gen)}

    def draw(n):
        items, summaries = [], []
        for i in range(n):
            kind = i % 2
            summaries.append(centres[kind] + 0.3 * torch.randn(16, generator=gen))
            items.append((None, {"a": int(kind == 0), "b": int(kind == 1)}))
        return items, summaries

    torch.manual_seed(0)
    head = PresenceHead(embed_dim=8, text_dim=5, rank=4)
    items, summaries = draw(40)
    before = presence_counts(head, items, summaries, texts)
    loss = fit_presence(head, items, summaries, texts,
                        PresenceSettings(epochs=60, batch=16, lr=1e-2))
    assert loss[-1] < loss[0] / 5
    test_items, test_summaries = draw(20)
    after = presence_counts(head, test_items, test_summaries, texts)
    assert after == {"present": 20, "present_kept": 20, "absent": 20, "absent_kept": 0}
    assert before != after


@pytest.fixture
def seg_pair():
    """Two Segmenters on one image: the same tiny adapter without and with a presence head."""
    torch.manual_seed(0)
    cfg = MoTEConfig(text_dim=DIM, ppt_queries=2)
    plain = attach_adapter(tiny_sam(), "new", cfg, backbone="tiny", backbone_sha256="0" * 64)
    torch.manual_seed(0)
    gated = attach_adapter(tiny_sam(), "new", MoTEConfig(text_dim=DIM, ppt_queries=2,
                                                         presence=True),
                           backbone="tiny", backbone_sha256="0" * 64)
    gated.load_state_dict(plain.state_dict(), strict=False)
    meta = {"vocabulary": ["liver", "spleen"], "text": {"encoder": "hash", "template": "{}"}}
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    out = []
    for model in (plain, gated):
        model.card = card(meta)
        s = Segmenter(model, text_encoder=HashEncoder())
        s.set_image(image)
        out.append(s)
    return out


def test_auto_mode_drops_what_the_head_rejects_and_leaves_masks_alone(seg_pair):
    plain, gated = seg_pair
    head = gated.model.adapter.presence
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        # "liver" gets a strongly positive bias, "spleen" a strongly negative one
        direction = gated.embed_text(["liver"])[0] - gated.embed_text(["spleen"])[0]
        head.bias.weight.copy_(20 * direction[None])
    a = plain.predict_auto(threshold=-10.0)
    b = gated.predict_auto(threshold=-10.0)
    assert a.presence == {} and set(b.presence) == {"liver", "spleen"}
    assert b.presence["liver"] > 0.99 and b.presence["spleen"] < 0.01
    assert b.kept == {"liver": a.kept["liver"], "spleen": False}
    assert a.kept["spleen"]  # it was the head that dropped it
    for name in ("liver", "spleen"):  # the masks themselves are untouched
        pa, pb = plain.predict(text=name), gated.predict(text=name)
        assert np.array_equal(pa.logits, pb.logits)
        assert "presence" in pb.extras and "presence" not in pa.extras
    assert gated.predict(text="spleen").extras["presence"] < 0.01
    assert presence_threshold(gated.card) == 0.5
    gated.model.card = dataclasses.replace(gated.model.card,
                                           presence=card({"presence": {"threshold": 0.0}}).presence)
    assert gated.predict_auto(threshold=-10.0).kept["spleen"]


def _nuclei_quadrants(root: Path) -> Path:
    """The bundled nuclei image as four quadrant cases (a second modality beside the CT)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    img = np.asarray(Image.open(ASSETS / "nuclei.png"))
    lab = (np.asarray(Image.open(ASSETS / "nuclei_label.png")) > 0).astype(np.uint8)
    h, w = lab.shape
    for q, (r, c) in enumerate([(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]):
        tile = (slice(r, r + h // 2), slice(c, c + w // 2))
        Image.fromarray(img[tile]).save(root / "images" / f"q{q}.png")
        Image.fromarray(lab[tile]).save(root / "labels" / f"q{q}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "fluorescence microscopy"},
        "labels": {"background": 0, "nuclei": 1}}))
    return root


def test_presence_training_end_to_end(lung_dataset, tmp_path, capsys):  # noqa: F811
    """A run folder with a CT and a microscopy dataset: the head learns that tumour belongs to
    the CT and nuclei to the microscopy image; every other tensor is copied unchanged; a run
    with no absent-class query to learn from is refused with one line."""
    from segmote.adapter import read_adapter_metadata, save_adapter
    from segmote.build import load_model
    from segmote.data.datasets import discover, make_split, save_split
    from segmote.io import read_image
    from segmote.training.config import load_config, save_config
    from segmote.cli.main import main
    from segmote.training.run_data import class_texts
    from segmote.training.trainer import build_model

    nuclei = _nuclei_quadrants(tmp_path / "Dataset002_Nuclei")
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(overrides={"min_foreground": 200, "cache_dir": str(tmp_path / "cache"),
                                 "data": [str(lung_dataset), str(nuclei)]})
    save_config(cfg, run / "config.yaml")
    save_split(make_split(discover([lung_dataset, nuclei]), val_fraction=0.34, seed=0),
               run / "split.json")
    texts, text_meta = class_texts(cfg, ["nuclei", "tumour"])
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"), text_meta["dim"])
    adapter = run / "adapter_latest.safetensors"
    save_adapter(model, adapter, {"vocabulary": ["nuclei", "tumour"], "text": text_meta})

    assert main(["presence", str(run), "--negatives", "other-modalities", "-o",
                 str(run / "gated.safetensors")]) == 0
    assert "presence head:" in capsys.readouterr().out
    a, b = load_file(adapter), load_file(run / "gated.safetensors")
    assert set(b) - set(a) and all(k.startswith("presence.") for k in set(b) - set(a))
    assert all(torch.equal(a[k], b[k]) for k in a)
    entry = read_adapter_metadata(run / "gated.safetensors")["presence"]
    assert entry["negatives"] == "other-modalities" and entry["threshold"] == 0.5
    assert entry["training_counts"]["absent_kept"] == 0
    assert entry["training_counts"]["present_kept"] == entry["training_counts"]["present"]

    seg = Segmenter(load_model(adapter=str(run / "gated.safetensors")))
    ct = read_image(lung_dataset / "imagesTr" / "lung_000_0000.nii.gz").array
    seg.set_image(ct[..., 0].T, modality="CT")
    on_ct = seg.predict_auto(["nuclei", "tumour"]).presence
    seg.set_image(np.asarray(Image.open(ASSETS / "nuclei.png")))
    on_nuclei = seg.predict_auto(["nuclei", "tumour"]).presence
    assert on_ct["tumour"] > 0.5 > on_ct["nuclei"]
    assert on_nuclei["nuclei"] > 0.5 > on_nuclei["tumour"]

    # one class per dataset, in every slice: no absent query of the same dataset to learn from
    assert main(["presence", str(run), "--negatives", "dataset-absent", "-o",
                 str(run / "none.safetensors")]) == 1  # as every segmote command
    err = capsys.readouterr().err  # the cache's progress bar, then one line
    assert err.count("error") == 1 and err.splitlines()[-1].startswith("segmote presence: error: ")
    assert "no absent-class query" in err
    assert not (run / "none.safetensors").exists()


def test_shipped_adapter_keeps_only_the_classes_of_the_images_domain(tmp_path, capsys):
    """The default adapter (with its presence head) asked for all 119 classes: on the microscopy
    image only nuclei (without the head 97 of 119 classes gave a mask there), on a slice of the
    CT crop only tumour; the CLI's note (every class was asked, as the README promises) says
    that the presence head drops the classes of other domains."""
    import nibabel as nib

    from segmote.build import load_model
    from segmote.cli.main import main

    out = tmp_path / "out.png"
    assert main(["predict", "-i", str(ASSETS / "nuclei.png"), "-o", str(out), "--auto"]) == 0
    err = capsys.readouterr().err
    assert "1 of 119 classes found: 118=nuclei (" in err, err
    assert "note: --auto without --classes" in err and "presence head drops classes" in err, err
    seg = Segmenter(load_model())
    ct = np.asarray(nib.load(ASSETS / "lung2_ct_crop.nii.gz").dataobj)
    seg.set_image(ct[..., 10].T, modality="CT")
    auto = seg.predict_auto()
    assert [n for n, k in auto.kept.items() if k] == ["tumour"]
    assert auto.presence["tumour"] > 0.5 and auto.presence["nuclei"] < 0.5
